//! How foodpipe authenticates to and encrypts its connections: Kafka's
//! `security.protocol` in rskafka terms.
//!
//! - TLS (the `tls` feature): rskafka's `transport-tls`, i.e. rustls with
//!   the ring crypto provider. ring compiles C and assembly, which is why
//!   TLS is opt-in: the default build compiles no C. [`tls_client_config`]
//!   builds the rustls configuration for Kafka and PostgreSQL alike.
//! - SASL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, through rskafka's `rsasl`
//!   (pure Rust, always compiled by rskafka 0.6). Without TLS the password
//!   (PLAIN) or its proof (SCRAM) crosses the network in the clear.

use std::fmt;

/// A SASL mechanism rskafka implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

/// SASL credentials; `Debug` never shows the password.
#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl SaslCredentials {
    pub(crate) fn to_rskafka(&self) -> rskafka::client::SaslConfig {
        use rskafka::client::{Credentials, SaslConfig};
        let credentials = Credentials::new(self.username.clone(), self.password.clone());
        match self.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        }
    }
}

/// TLS and SASL settings of the Kafka connections; the default is
/// plaintext without authentication.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Encrypt every broker connection with this rustls configuration.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Authenticate every broker connection.
    pub sasl: Option<SaslCredentials>,
}

impl Security {
    /// Kafka's name for these settings.
    pub fn protocol(&self) -> &'static str {
        match (self.is_tls(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// Neither TLS nor SASL: what foodpipe's raw metadata probe can speak.
    pub fn is_plaintext(&self) -> bool {
        !self.is_tls() && self.sasl.is_none()
    }

    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        return false;
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) that
/// trusts the PEM certificates in `ca_file`, or Mozilla's root
/// certificates (webpki-roots, compiled in: a scratch image has no CA
/// bundle) when there is none.
#[cfg(feature = "tls")]
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password never reaches a log line through `{:?}`.
    #[test]
    fn debug_redacts_the_password() {
        let c = SaslCredentials {
            mechanism: SaslMechanism::ScramSha512,
            username: "alice".into(),
            password: "hunter2".into(),
        };
        // `..` fills `tls`, which exists only with the `tls` feature.
        #[allow(clippy::needless_update)]
        let security = Security {
            sasl: Some(c),
            ..Security::default()
        };
        let shown = format!("{security:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    /// Kafka's security.protocol names follow from TLS and SASL.
    #[test]
    fn protocol_names() {
        let mut s = Security::default();
        assert_eq!(s.protocol(), "PLAINTEXT");
        s.sasl = Some(SaslCredentials {
            mechanism: SaslMechanism::Plain,
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(s.protocol(), "SASL_PLAINTEXT");
    }

    /// A CA file that is missing or holds no certificate is an error that
    /// names the file.
    #[cfg(feature = "tls")]
    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = tls_client_config(Some(missing)).expect_err("missing file");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = tls_client_config(Some(&empty)).expect_err("no certificate");
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let _ = std::fs::remove_file(empty);
        assert!(tls_client_config(None).is_ok(), "webpki roots");
    }
}
