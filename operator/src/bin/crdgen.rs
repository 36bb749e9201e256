//! Writes the DaskCluster CRD as YAML: to each path given, or to stdout.
//!
//!     cargo run -p daskrs-operator --bin crdgen -- crds/daskcluster.yaml charts/daskrs/crds/daskcluster.yaml

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = daskrs_operator::crd::crd_yaml();
    let paths: Vec<_> = std::env::args_os().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    for path in paths {
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
