//! DNS name matching for `toFQDNs` and DNS rules: `matchName` and
//! `matchPattern` (`*` within one label, a leading `**.` for one or more
//! whole labels), compared case-insensitively with a trailing dot.

use regex::Regex;
use std::sync::Arc;

/// A compiled name matcher.
#[derive(Clone, Debug, Default)]
pub struct NameMatcher {
    /// `None` only for the default (matches nothing).
    regex: Option<Arc<Regex>>,
}

/// Lower-cases and adds the trailing dot.
pub fn normalize(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl NameMatcher {
    pub fn matches(&self, name: &str) -> bool {
        self.regex
            .as_ref()
            .is_some_and(|r| r.is_match(&normalize(name)))
    }

    /// `matchName`: letters, digits, `-`, `_` and `.` only.
    pub fn name(name: &str) -> Result<NameMatcher, String> {
        if name.is_empty() || name.len() > 255 {
            return Err("matchName must be 1 to 255 characters".into());
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "matchName may contain only letters, digits, '-', '_' and '.', not '{c}' (use matchPattern for wildcards)"
            ));
        }
        let re = format!("^{}$", regex::escape(&normalize(name)));
        Ok(NameMatcher {
            regex: Some(Arc::new(Regex::new(&re).map_err(|e| e.to_string())?)),
        })
    }

    /// `matchPattern`, as Cilium's matchpattern package reads it.
    pub fn pattern(pattern: &str) -> Result<NameMatcher, String> {
        if pattern.is_empty() || pattern.len() > 255 {
            return Err("matchPattern must be 1 to 255 characters".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*')))
        {
            return Err(format!(
                "matchPattern may contain only letters, digits, '-', '_', '.' and '*', not '{c}'"
            ));
        }
        let p = normalize(pattern);
        // A pattern of only stars (and the dot) matches every name.
        if p.trim_end_matches('.').chars().all(|c| c == '*') {
            return Ok(NameMatcher {
                regex: Some(Arc::new(
                    Regex::new(r"^(?:[-a-zA-Z0-9_]+\.)*$|^\.$").map_err(|e| e.to_string())?,
                )),
            });
        }
        let mut re = String::from("^");
        let mut rest = p.as_str();
        // Leading `**.` (two or more stars then a dot): one or more labels.
        let stars = rest.chars().take_while(|c| *c == '*').count();
        if stars >= 2 && rest[stars..].starts_with('.') {
            re.push_str(r"(?:[-a-zA-Z0-9_]+\.)+");
            rest = &rest[stars + 1..];
        }
        let mut in_stars = false;
        for c in rest.chars() {
            if c == '*' {
                if !in_stars {
                    re.push_str("[-a-zA-Z0-9_]*");
                }
                in_stars = true;
                continue;
            }
            in_stars = false;
            if c == '.' {
                re.push_str(r"\.");
            } else {
                re.push(c);
            }
        }
        re.push('$');
        Ok(NameMatcher {
            regex: Some(Arc::new(Regex::new(&re).map_err(|e| e.to_string())?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_cilium() {
        let p = NameMatcher::pattern("*.cilium.io").expect("valid");
        assert!(p.matches("www.cilium.io"));
        assert!(!p.matches("cilium.io"));
        assert!(!p.matches("a.b.cilium.io"));
        let p = NameMatcher::pattern("*cilium.io").expect("valid");
        assert!(p.matches("cilium.io"));
        assert!(p.matches("subcilium.io"));
        let p = NameMatcher::pattern("**.cilium.io").expect("valid");
        assert!(p.matches("a.b.cilium.io"));
        assert!(p.matches("b.cilium.io"));
        assert!(!p.matches("cilium.io"));
        let p = NameMatcher::pattern("*").expect("valid");
        assert!(p.matches("anything.example.com"));
        let n = NameMatcher::name("API.github.com").expect("valid");
        assert!(n.matches("api.github.com."));
        assert!(NameMatcher::name("a*b").is_err());
    }
}
