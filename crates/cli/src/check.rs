//! `portcullis check`: validate a config file, print every error with its path, and every
//! warning. Exit 0 when valid, 1 when not.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match portcullis_config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            println!(
                "{}: valid ({} catalog server(s))",
                path.display(),
                config.servers.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.errors {
                println!("error: {error}");
            }
            println!("{}: {} error(s)", errors.source_name, errors.errors.len());
            ExitCode::from(1)
        }
    }
}
