//! `daskrs certs`: a cluster's TLS certificates in a directory, for
//! clusters outside Kubernetes (the operator keeps its own in Secrets).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use daskrs_core::certs::{Authority, Issued};
use daskrs_proto::tls::{CA_FILE, CERT_FILE, KEY_FILE};

use super::{CertsArgs, Failure};

/// The members a cluster's certificates are made for, each a directory.
const MEMBERS: [&str; 3] = ["scheduler", "worker", "client"];

pub fn certs(a: CertsArgs) -> Result<(), Failure> {
    // An authority already there is kept: its certificates are renewed,
    // and everything that trusts it goes on trusting them.
    let (cert, key) = (a.out.join(CA_FILE), a.out.join("ca.key"));
    let reused = cert.exists() && key.exists();
    let ca = if reused {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", p.display())))
        };
        Authority::from_pem(&a.cluster, &read(&cert)?, &read(&key)?)
            .map_err(|e| Failure::new(2, format!("{}: {e}", key.display())))?
    } else {
        let ca = Authority::generate(&a.cluster).map_err(|e| Failure::new(3, e.to_string()))?;
        write_authority(&a.out, &ca)?;
        ca
    };
    for who in MEMBERS {
        let names: &[String] = if who == "scheduler" { &a.names } else { &[] };
        let issued = ca
            .issue(who, names, a.days)
            .map_err(|e| Failure::new(2, e.to_string()))?;
        write_member(&a.out.join(who), &ca, &issued)?;
    }
    let authority = if reused {
        "renewed the certificates of the authority in"
    } else {
        "wrote a new authority to"
    };
    eprintln!(
        "{authority} {} (keep ca.key private) and, for --tls-dir, the directories {} (valid for {} days; \
         run this again to renew them)",
        a.out.display(),
        MEMBERS
            .map(|m| a.out.join(m).display().to_string())
            .join(", "),
        a.days
    );
    Ok(())
}

/// Writes `ca.crt` and `ca.key` to `dir`.
pub fn write_authority(dir: &Path, ca: &Authority) -> Result<(), Failure> {
    write(dir, CA_FILE, &ca.cert_pem, false)?;
    write(dir, "ca.key", &ca.key_pem(), true)
}

/// Writes a member's `ca.crt`, `tls.crt` and `tls.key` to `dir`.
pub fn write_member(dir: &Path, ca: &Authority, issued: &Issued) -> Result<(), Failure> {
    write(dir, CA_FILE, &ca.cert_pem, false)?;
    write(dir, CERT_FILE, &issued.cert_pem, false)?;
    write(dir, KEY_FILE, &issued.key_pem, true)
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), Failure> {
    let path = dir.join(name);
    let failed =
        |e: std::io::Error| Failure::new(3, format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)
}
