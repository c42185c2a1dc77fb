//! The `palisade policy ...` commands.

mod validate;

use crate::FeatureArgs;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check manifests strictly: every error of every file, with file:line:column and field.
    #[command(
        after_help = "Exit status: 0 all valid, 1 something invalid, 2 usage or I/O error.\n\n\
Examples:\n  palisade policy validate policies/\n  palisade policy validate -o json policy.yaml\n  cat policy.yaml | palisade policy validate -"
    )]
    Validate {
        /// Files or directories (searched recursively for .yaml, .yml, .json); `-` for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = validate::Format::Text)]
        output: validate::Format,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Print policies as the engine understood them, with defaults made explicit.
    #[command(
        after_help = "Examples:\n  palisade policy get -f policy.yaml\n  palisade policy get -f policies/ -o json"
    )]
    Get {
        /// Files or directories with manifests; `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = validate::GetFormat::Yaml)]
        output: validate::GetFormat,
        #[command(flatten)]
        features: FeatureArgs,
    },
}

pub fn run_policy(c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::Validate {
            paths,
            output,
            features,
        } => validate::validate(&paths, output, &features.options()),
        PolicyCommand::Get {
            files,
            output,
            features,
        } => validate::get(&files, output, &features.options()),
    }
}
