//! Writes the DaskCluster CRD as YAML: to the path given, or to stdout.
//!
//!     cargo run -p daskrs-operator --bin crdgen -- crds/daskcluster.yaml

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = daskrs_operator::crd::crd_yaml();
    match std::env::args_os().nth(1) {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(&path, yaml) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crdgen: cannot write {}: {e}", path.to_string_lossy());
                ExitCode::FAILURE
            }
        },
    }
}
