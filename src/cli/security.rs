//! Flags for TLS and SASL, Kafka's `security.protocol` vocabulary.
//!
//! The flags exist in every build so `--help` shows them; the code that
//! uses them is compiled in by the `tls` and `sasl` cargo features. A build
//! without the feature a flag needs says so in one line (exit 2).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use store::StoreConfig;

use super::BadInput;

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    #[value(name = "PLAINTEXT")]
    Plaintext,
    #[value(name = "SSL")]
    Ssl,
    #[value(name = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[value(name = "SASL_SSL")]
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanismArg {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

/// How to secure the Kafka connections.
#[derive(Debug, Args)]
#[command(
    next_help_heading = "Kafka security (TLS needs the `tls` feature, SASL the `sasl` feature)"
)]
pub struct KafkaSecurityArgs {
    /// PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL, as Kafka's security.protocol.
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value = "PLAINTEXT"
    )]
    security_protocol: SecurityProtocol,
    /// PEM file of the CA certificates that signed the brokers' certificates
    /// [default: Mozilla's root certificates, compiled in].
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", value_name = "PEM")]
    ssl_ca_location: Option<PathBuf>,
    /// SASL mechanism.
    #[arg(
        long,
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        default_value = "PLAIN"
    )]
    sasl_mechanism: SaslMechanismArg,
    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    sasl_username: Option<String>,
    /// SASL password (prefer the environment variable to the flag, which
    /// other users of the machine can see in the process list).
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    sasl_password: Option<String>,
}

impl KafkaSecurityArgs {
    pub fn security(&self) -> anyhow::Result<kafka::Security> {
        use SecurityProtocol::*;
        let protocol = self.security_protocol;
        let wants_tls = matches!(protocol, Ssl | SaslSsl);
        let wants_sasl = matches!(protocol, SaslPlaintext | SaslSsl);
        let name = protocol
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned());
        let mut security = kafka::Security::default();

        if !wants_tls && self.ssl_ca_location.is_some() {
            return bad(format!(
                "--ssl-ca-location is used only with --security-protocol SSL or SASL_SSL, not {name}"
            ));
        }
        if wants_tls {
            #[cfg(feature = "tls")]
            {
                security.tls = Some(
                    kafka::tls_client_config(self.ssl_ca_location.as_deref()).map_err(BadInput)?,
                );
            }
            #[cfg(not(feature = "tls"))]
            return bad(format!(
                "--security-protocol {name} needs TLS, and this foodpipe was built without it: \
                 rebuild with `cargo build --release --features tls`"
            ));
        }

        if !wants_sasl && (self.sasl_username.is_some() || self.sasl_password.is_some()) {
            return bad(format!(
                "SASL credentials are used only with --security-protocol SASL_PLAINTEXT or SASL_SSL, not {name}"
            ));
        }
        if wants_sasl {
            if !cfg!(feature = "sasl") {
                return bad(format!(
                    "--security-protocol {name} needs SASL, and this foodpipe was built without it: \
                     rebuild with `cargo build --release --features sasl`"
                ));
            }
            let (Some(username), Some(password)) = (&self.sasl_username, &self.sasl_password)
            else {
                return bad(format!(
                    "--security-protocol {name} needs --sasl-username and --sasl-password \
                     (or KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
                ));
            };
            security.sasl = Some(kafka::SaslCredentials {
                mechanism: match self.sasl_mechanism {
                    SaslMechanismArg::Plain => kafka::SaslMechanism::Plain,
                    SaslMechanismArg::ScramSha256 => kafka::SaslMechanism::ScramSha256,
                    SaslMechanismArg::ScramSha512 => kafka::SaslMechanism::ScramSha512,
                },
                username: username.clone(),
                password: password.clone(),
            });
        }
        Ok(security)
    }
}

/// How to secure the PostgreSQL connections: `sslmode=require` in the URL
/// turns TLS on (with the `tls` feature), verifying the server certificate.
#[derive(Debug, Args)]
pub struct PgTlsArgs {
    /// PEM file of the CA certificates to trust for PostgreSQL when the URL
    /// says sslmode=require [default: Mozilla's root certificates].
    #[arg(long, env = "PGSSLROOTCERT", value_name = "PEM")]
    pg_ssl_root_cert: Option<PathBuf>,
}

impl PgTlsArgs {
    /// Puts the TLS configuration into `config` (a no-op without `tls`;
    /// a URL requiring TLS then fails in `Store::connect` saying why).
    pub fn apply(&self, config: &mut StoreConfig) -> anyhow::Result<()> {
        #[cfg(feature = "tls")]
        {
            config.tls =
                Some(kafka::tls_client_config(self.pg_ssl_root_cert.as_deref()).map_err(BadInput)?);
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = config;
            if self.pg_ssl_root_cert.is_some() {
                return bad(
                    "--pg-ssl-root-cert needs TLS, and this foodpipe was built without it: \
                     rebuild with `cargo build --release --features tls`"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }
}

fn bad<T>(message: String) -> anyhow::Result<T> {
    Err(BadInput(message).into())
}
