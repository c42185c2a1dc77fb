//! Reading manifests from files, directories (recursively) and stdin.

use anyhow::{Context, Result, bail};
use palisade_policy::manifest::{DocResult, Options, parse_file};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One file's text and the name errors will show.
pub struct Source {
    pub name: String,
    pub text: String,
}

const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// Expands paths into sources: a directory contributes every `.yaml`,
/// `.yml` and `.json` file below it, sorted; `-` reads stdin.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading manifests from stdin")?;
            out.push(Source {
                name: "<stdin>".into(),
                text,
            });
            continue;
        }
        let meta = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!(
                    "{}: no .yaml, .yml or .json files in this directory",
                    p.display()
                );
            }
            for f in files {
                out.push(read_one(&f)?);
            }
        } else {
            out.push(read_one(p)?);
        }
    }
    Ok(out)
}

fn read_one(p: &Path) -> Result<Source> {
    let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", p.display()))?;
    Ok(Source {
        name: p.display().to_string(),
        text,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Every document of every source, decoded.
pub fn parse_sources(sources: &[Source], opts: &Options) -> Vec<(String, Vec<DocResult>)> {
    sources
        .iter()
        .map(|s| (s.name.clone(), parse_file(&s.name, &s.text, opts)))
        .collect()
}
