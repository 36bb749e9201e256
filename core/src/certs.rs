//! A cluster's certificates: one certificate authority per cluster, and the
//! certificates it issues to the scheduler, the workers and clients. Each
//! issued certificate names [`SERVER_NAME`], which every peer checks; the
//! authority is what makes a process a member of its cluster, so a
//! certificate of another cluster's authority is refused.
//!
//! Used by the operator (which keeps them in Secrets) and by `daskrs certs`
//! (which writes them to a directory, for clusters outside Kubernetes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The name every certificate of a cluster carries and every peer checks,
/// whatever address it dialled (pod IPs, a port-forward's localhost).
pub const SERVER_NAME: &str = "daskrs";

/// How long an authority is valid: it is not renewed.
pub const CA_DAYS: u32 = 3650;
/// How long an issued certificate is valid.
pub const CERT_DAYS: u32 = 90;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("the certificate authority's key is not a PEM private key: {0}")]
    Key(rcgen::Error),
    #[error(
        "invalid certificate name {0:?}: a DNS name (letters, digits, `-` and `.`) or an IP address"
    )]
    Name(String),
}

/// A certificate (PEM) and its private key (PEM), and when it expires.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A cluster's certificate authority.
pub struct Authority {
    cluster: String,
    key: KeyPair,
    /// The authority's own certificate (PEM), which peers trust.
    pub cert_pem: String,
}

impl Authority {
    /// A new authority for `cluster` (a name shown in the certificates it issues).
    pub fn generate(cluster: &str) -> Result<Authority, CertError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(&key);
        let (not_before, not_after) = validity(CA_DAYS);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cluster: cluster.to_string(),
            key,
            cert_pem: cert.pem(),
        })
    }

    /// The authority of a certificate and key made by [`Authority::generate`];
    /// `cluster` is shown in the certificates it issues.
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Authority, CertError> {
        Ok(Authority {
            cluster: cluster.to_string(),
            key: KeyPair::from_pem(key_pem).map_err(CertError::Key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The authority's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `who` (a name shown in it, such as `scheduler`)
    /// valid for `days`, naming [`SERVER_NAME`] and `extra_names` (DNS
    /// names or IP addresses), for servers and clients alike.
    pub fn issue(&self, who: &str, extra_names: &[String], days: u32) -> Result<Issued, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("daskrs {} {who}", self.cluster));
        let mut sans = vec![san(SERVER_NAME)?];
        for name in extra_names {
            sans.push(san(name)?);
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(days);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(&self.key), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.unix_timestamp().max(0) as u64,
        })
    }
}

/// Whether a certificate issued for `days` that expires at `not_after`
/// (seconds since the Unix epoch) should be replaced at `now`: once less
/// than a third of its life is left.
pub fn due_for_renewal(not_after: u64, days: u32, now: SystemTime) -> bool {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let life = u64::from(days) * 86_400;
    not_after.saturating_sub(now) < life / 3
}

/// When a certificate issued for `days` that expires at `not_after` is due
/// for renewal (see [`due_for_renewal`]).
pub fn renewal_time(not_after: u64, days: u32) -> SystemTime {
    let life = u64::from(days) * 86_400;
    UNIX_EPOCH + Duration::from_secs(not_after.saturating_sub(life / 3))
}

/// The authority's own certificate. Its name is made from its public key,
/// so that the authority is rebuilt from its key alone and no two
/// authorities share a name (a certificate of another cluster is then
/// refused as of an unknown issuer).
fn ca_params(key: &KeyPair) -> CertificateParams {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("daskrs cluster authority {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns_like = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    if name.is_empty() || name.len() > 253 || !name.bytes().all(dns_like) {
        return Err(CertError::Name(name.to_string()));
    }
    let dns = name
        .to_string()
        .try_into()
        .map_err(|_| CertError::Name(name.to_string()))?;
    Ok(SanType::DnsName(dns))
}

/// From an hour ago (clocks of a cluster's nodes differ) to `days` from now.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_reloaded_from_pem_issues_certificates() {
        let ca = Authority::generate("ns/demo").unwrap();
        let again = Authority::from_pem("ns/demo", &ca.cert_pem, &ca.key_pem()).unwrap();
        let issued = again
            .issue(
                "worker",
                &["demo-scheduler.ns.svc".into(), "127.0.0.1".into()],
                90,
            )
            .unwrap();
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(issued.not_after > now + 89 * 86_400 && issued.not_after <= now + 90 * 86_400 + 5);
    }

    #[test]
    fn a_bad_name_or_key_is_named() {
        let ca = Authority::generate("demo").unwrap();
        let err = ca.issue("x", &["not a name!".into()], 1).unwrap_err();
        assert!(err.to_string().contains("not a name!"), "{err}");
        let err = Authority::from_pem("demo", &ca.cert_pem, "garbage")
            .err()
            .unwrap();
        assert!(err.to_string().contains("private key"), "{err}");
    }

    #[test]
    fn renewal_falls_due_with_a_third_of_the_life_left() {
        let day = 86_400;
        let now = UNIX_EPOCH + Duration::from_secs(1_000 * day);
        assert!(!due_for_renewal(1_000 * day + 31 * day, 90, now));
        assert!(due_for_renewal(1_000 * day + 29 * day, 90, now));
        assert!(due_for_renewal(0, 90, now));
        assert_eq!(
            renewal_time(1_000 * day, 90),
            UNIX_EPOCH + Duration::from_secs(970 * day)
        );
    }
}
