//! The node's TLS identity and its rustls server config.
//!
//! With `tls-cert` / `tls-key` set, those PEM files are used. Without them the
//! node keeps its own small CA in `<data-dir>/tls/`:
//! - `ca.pem`, `ca.key`: created on first start; clients trust `ca.pem`;
//! - `server.pem`, `server.key`: a server certificate signed by that CA for
//!   `localhost`, `127.0.0.1`, `::1` and the listen IP. It is reused on later
//!   starts while rustls's WebPKI verifiers accept it against `ca.pem` for
//!   every one of those names and as a node's client certificate; otherwise
//!   (the listen IP changed, it has expired, it lacks clientAuth, or `ca.pem`
//!   is another CA now) it is issued again by the CA, so clients keep
//!   trusting it. A clock before 1975 (a board without a real-time clock,
//!   before NTP) is taken as 1975, when the certificates it issues start.
//!
//! Keys are written with mode 0600 (temp file, fsync, rename). The rustls
//! config uses the ring provider explicitly, TLS 1.3 only (QUIC needs it) and
//! ALPN `eddy/1`.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_client::protocol::ALPN;
use log::{info, warn};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::config::NodeConfig;

/// Directory under `data-dir` holding the generated CA and certificate.
pub const TLS_DIR: &str = "tls";
/// The CA certificate clients trust.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server's private key (mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";
/// Common name of the generated CA. It must never change: the CA is rebuilt
/// from its key and this name to sign a new server certificate.
const CA_COMMON_NAME: &str = "Eddy node CA";
/// Common name of the generated server certificate.
const SERVER_COMMON_NAME: &str = "eddy node";
/// Most bytes read from a PEM file.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Why the TLS identity could not be loaded or created. Fix the files (or
/// remove `<data-dir>/tls/` to have them made again) and restart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate a TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("TLS setup failed: {0}; check that tls-cert and tls-key belong together")]
    Rustls(#[from] rustls::Error),
    /// The config cannot be used for QUIC.
    #[error("QUIC TLS setup failed: {0}")]
    Quic(String),
    /// A configured `tls-cert` that the other nodes would refuse.
    #[error(
        "{} {reason}; in a cluster tls-cert must be issued by tls-ca ({}) and allow client \
         authentication (no extended key usage, or one that includes clientAuth): issue it \
         again, or leave tls-cert and tls-key unset so the node gets one from tls-ca and \
         tls-ca-key",
        cert.display(),
        ca.display()
    )]
    NodeCertificate {
        /// The configured certificate.
        cert: PathBuf,
        /// The CA the nodes trust.
        ca: PathBuf,
        /// Why they would refuse it.
        reason: String,
    },
    /// The check of the other nodes' certificates cannot be built from tls-ca.
    #[error("cannot check the other nodes' certificates with tls-ca: {0}")]
    Verifier(String),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA file clients should trust, when the node made it.
    pub ca_file: Option<PathBuf>,
}

/// The node's identity: the configured files, or the generated CA and server
/// certificate under `<data-dir>/tls/` (created or extended as needed).
pub fn load_or_create(config: &NodeConfig) -> Result<Identity, TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let identity = Identity {
                chain: read_chain(cert)?,
                key: read_key(key)?,
                ca_file: None,
            };
            info!("TLS certificate {} (key {})", cert.display(), key.display());
            Ok(identity)
        }
        _ => match (&config.tls_ca, &config.tls_ca_key) {
            (Some(ca), Some(ca_key)) => issued_by_shared_ca(
                &config.data_dir.join(TLS_DIR),
                config.listen.ip(),
                ca,
                ca_key,
            ),
            _ => generated(&config.data_dir.join(TLS_DIR), config.listen.ip()),
        },
    }
}

/// The CA file a node trusts when it talks to the other nodes of its
/// cluster: `tls-ca`, else the CA it made itself.
pub fn peer_trust_file(config: &NodeConfig) -> PathBuf {
    match &config.tls_ca {
        Some(ca) => ca.clone(),
        None => config.data_dir.join(TLS_DIR).join(CA_CERT_FILE),
    }
}

/// The certificate a node presents when it connects to the other nodes of
/// its cluster: its own server certificate (`tls-cert` / `tls-key`, else the
/// one [`load_or_create`] keeps under `<data-dir>/tls/`). Issued certificates
/// allow client authentication; a configured `tls-cert` must be issued by
/// `tls-ca` and allow it too (no extended key usage, or one that includes
/// clientAuth), or the other nodes would refuse the handshake, so
/// [`quic_server_config`] refuses to start with it.
pub fn node_client_cert(config: &NodeConfig) -> eddy_client::ClientCert {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => eddy_client::ClientCert {
            cert_file: cert.clone(),
            key_file: key.clone(),
        },
        _ => {
            let dir = config.data_dir.join(TLS_DIR);
            eddy_client::ClientCert {
                cert_file: dir.join(SERVER_CERT_FILE),
                key_file: dir.join(SERVER_KEY_FILE),
            }
        }
    }
}

/// Makes a CA (certificate and key PEM files) that the nodes of one cluster
/// share as `tls-ca` / `tls-ca-key`.
pub fn create_shared_ca(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let pair = KeyPair::generate()?;
    let issued = ca_params()?.self_signed(&pair)?;
    write_private(key, pair.serialize_pem().as_bytes())?;
    write_public(cert, issued.pem().as_bytes())?;
    Ok(())
}

/// A server certificate issued on every start by the cluster's shared CA
/// (`tls-ca`, `tls-ca-key`); cheap, and never stale when the CA changes.
fn issued_by_shared_ca(
    dir: &Path,
    listen: IpAddr,
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<Identity, TlsError> {
    std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let key = KeyPair::from_pem(&read_text(ca_key)?).map_err(|e| TlsError::Pem {
        path: ca_key.to_path_buf(),
        reason: format!("not a usable CA key ({e}); check tls-ca-key"),
    })?;
    // The issuer is rebuilt from the CA's key and the fixed CA name, so
    // tls-ca must be a CA made by `eddy cluster init-ca` (same name).
    if read_chain(ca_cert)?.is_empty() {
        return Err(TlsError::Pem {
            path: ca_cert.to_path_buf(),
            reason: "holds no certificate; check tls-ca".to_owned(),
        });
    }
    let issuer = Issuer::new(ca_params()?, key);
    let identity = issue_server(dir, listen, &issuer, ca_cert.to_path_buf())?;
    Ok(identity)
}

/// The names a generated server certificate carries.
pub fn subject_alt_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
    ];
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    names
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn generated(dir: &Path, listen: IpAddr) -> Result<Identity, TlsError> {
    std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let server_cert = dir.join(SERVER_CERT_FILE);
    let server_key = dir.join(SERVER_KEY_FILE);
    let names = subject_alt_names(listen);
    if listen.is_unspecified() {
        warn!(
            "listening on {listen} with a generated certificate that names only localhost: \
             clients on other machines need tls-cert/tls-key naming this host, or the node \
             listening on its own IP (which the generated certificate then names)"
        );
    }

    if server_cert.exists() && server_key.exists() {
        let chain = read_chain(&server_cert)?;
        let now = issued_check_time(UnixTime::now());
        let Some(stale) = unusable_reason(&chain, &ca_cert, &names, now) else {
            info!(
                "TLS certificate {} (clients trust {})",
                server_cert.display(),
                ca_cert.display()
            );
            return Ok(Identity {
                chain,
                key: read_key(&server_key)?,
                ca_file: Some(ca_cert),
            });
        };
        info!("{} {stale}; issuing a new one", server_cert.display());
    }

    let issuer = if ca_cert.exists() && ca_key.exists() {
        let key = KeyPair::from_pem(&read_text(&ca_key)?).map_err(|e| TlsError::Pem {
            path: ca_key.clone(),
            reason: format!(
                "not a usable CA key ({e}); remove {} to start over",
                dir.display()
            ),
        })?;
        Issuer::new(ca_params()?, key)
    } else {
        if ca_cert.exists() || ca_key.exists() {
            warn!(
                "{} has only one of {CA_CERT_FILE} and {CA_KEY_FILE}; making a new CA \
                 (clients must trust the new {CA_CERT_FILE})",
                dir.display()
            );
        }
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())?;
        write_public(&ca_cert, cert.pem().as_bytes())?;
        sync_dir(dir)?;
        info!("created a CA for this node: {}", ca_cert.display());
        Issuer::new(params, key)
    };

    issue_server(dir, listen, &issuer, ca_cert)
}

/// Issues a server certificate for `listen` (and the loopback names) signed
/// by `issuer`, and writes it and its key to `dir`.
fn issue_server(
    dir: &Path,
    listen: IpAddr,
    issuer: &Issuer<'_, KeyPair>,
    ca_cert: PathBuf,
) -> Result<Identity, TlsError> {
    let server_cert = dir.join(SERVER_CERT_FILE);
    let server_key = dir.join(SERVER_KEY_FILE);
    let names = subject_alt_names(listen);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_COMMON_NAME);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Client authentication too: the nodes of a cluster present this
    // certificate to each other (mutual TLS).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    write_private(&server_key, key.serialize_pem().as_bytes())?;
    write_public(&server_cert, cert.pem().as_bytes())?;
    sync_dir(dir)?;
    info!(
        "created TLS certificate {} for {}; clients trust {} (pass it with --ca on other machines)",
        server_cert.display(),
        names.join(", "),
        ca_cert.display()
    );
    Ok(Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Pem {
            path: server_key,
            reason: e.to_owned(),
        })?,
        ca_file: Some(ca_cert),
    })
}

/// Seconds from the Unix epoch to 1975-01-01, where the certificates this
/// node issues start (rcgen's default validity, 1975 to 4096).
const ISSUED_VALID_FROM_SECS: u64 = 157_766_400;

/// The time to check a certificate this node issued at: `now`, but never
/// before the day after such certificates start, so a board that boots with
/// its clock at 1970 (no real-time clock, NTP not synced yet) keeps its
/// certificate instead of issuing one that would start just as late.
fn issued_check_time(now: UnixTime) -> UnixTime {
    let floor = UnixTime::since_unix_epoch(Duration::from_secs(ISSUED_VALID_FROM_SECS + 86_400));
    now.max(floor)
}

/// Why a certificate would be refused.
#[derive(Debug)]
struct CertProblem {
    /// What is wrong, after the certificate's name: "is not a valid …".
    reason: String,
    /// Only its dates, at this machine's clock (expired, not valid yet).
    clock_only: bool,
}

impl CertProblem {
    fn new(reason: String) -> CertProblem {
        CertProblem {
            reason,
            clock_only: false,
        }
    }

    fn verification(what: &str, error: &rustls::Error) -> CertProblem {
        use rustls::CertificateError as E;
        CertProblem {
            reason: format!("is not a valid {what} ({error})"),
            clock_only: matches!(
                error,
                rustls::Error::InvalidCertificate(
                    E::Expired
                        | E::ExpiredContext { .. }
                        | E::NotValidYet
                        | E::NotValidYetContext { .. }
                )
            ),
        }
    }
}

/// Why a kept server certificate cannot be used as it is, or `None` when it
/// can. It is checked at `now` the way it will be used, with rustls's WebPKI
/// verifiers against `ca_file`: by clients, as a server certificate for each
/// of `names`; by the other nodes of a cluster, as a client certificate. So
/// a certificate that names an old listen address, lacks the clientAuth
/// usage (made before node certificates carried it), has expired, or was
/// issued by a CA that `ca_file` no longer holds is issued again.
fn unusable_reason(
    chain: &[CertificateDer<'static>],
    ca_file: &Path,
    names: &[String],
    now: UnixTime,
) -> Option<String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Some("holds no certificate".to_owned());
    };
    let roots = match ca_roots(ca_file) {
        Ok(roots) => roots,
        Err(e) => return Some(format!("cannot be checked against its CA: {e}")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider.clone(),
    )
    .build()
    {
        Ok(verifier) => verifier,
        Err(e) => return Some(format!("cannot be checked against its CA: {e}")),
    };
    for name in names {
        let server_name = match rustls_pki_types::ServerName::try_from(name.as_str()) {
            Ok(server_name) => server_name,
            Err(e) => return Some(format!("cannot be checked for the name {name}: {e}")),
        };
        if let Err(e) = rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*server,
            leaf,
            intermediates,
            &server_name,
            &[],
            now,
        ) {
            return Some(
                CertProblem::verification(&format!("server certificate for {name}"), &e).reason,
            );
        }
    }
    node_cert_problem(chain, roots, provider, now).map(|p| p.reason)
}

/// Why the other nodes of a cluster, trusting `roots`, would refuse `chain`
/// at `now` as a node's client certificate (mutual TLS), or `None` when they
/// accept it.
fn node_cert_problem(
    chain: &[CertificateDer<'static>],
    roots: rustls::RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
    now: UnixTime,
) -> Option<CertProblem> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Some(CertProblem::new("holds no certificate".to_owned()));
    };
    let client = match node_verifier(roots, provider) {
        Ok(verifier) => verifier,
        Err(e) => {
            return Some(CertProblem::new(format!(
                "cannot be checked against its CA: {e}"
            )));
        }
    };
    match client.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => None,
        Err(e) => Some(CertProblem::verification(
            "client certificate, which nodes present to each other",
            &e,
        )),
    }
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|_| TlsError::Pem {
        path: path.to_path_buf(),
        reason: "not a PEM text file".into(),
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is too large for a PEM file"),
        });
    }
    std::fs::read(path).map_err(read_error)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bytes(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bytes(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: format!("not a PEM private key: {e}"),
    })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |error| TlsError::Write {
        path: path.to_path_buf(),
        error,
    };
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_error)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_error)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_file(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_file(path, bytes, 0o644)
}

fn sync_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| TlsError::Write {
            path: dir.to_path_buf(),
            error,
        })
}

/// The rustls server config for `identity`: ring, TLS 1.3, ALPN `eddy/1`.
///
/// With `peer_roots` (a node of a cluster: the CA its nodes share) a client
/// may present a certificate, which must then chain to those roots; clients
/// without one are still served, but only a connection that presented one
/// may send the requests reserved to nodes ([`peer_is_node`]).
pub fn server_config(
    identity: Identity,
    peer_roots: Option<rustls::RootCertStore>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match peer_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(node_verifier(roots, provider)?),
    };
    let mut config = builder.with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The listener's client-certificate check in a cluster: a certificate, if
/// one is presented, must chain to `roots`; none is also fine (clients).
fn node_verifier(
    roots: rustls::RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// The certificates of the CA file at `path`, as trust roots.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate ({e}); check tls-ca"),
        })?;
    }
    Ok(roots)
}

/// Whether a connection's peer presented a client certificate (which the
/// handshake checked against the cluster's CA): another node of the cluster.
pub fn peer_is_node(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|chain| !chain.is_empty())
}

/// The QUIC crypto config of the node: [`load_or_create`] then
/// [`server_config`], verifying the certificates of other nodes when
/// clustered.
pub fn quic_server_config(
    config: &NodeConfig,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    // First the identity: without tls-ca it also writes the CA file that
    // the peers' certificates are checked against.
    let identity = load_or_create(config)?;
    let peer_roots = if config.is_clustered() {
        let trust = peer_trust_file(config);
        let roots = ca_roots(&trust)?;
        // A configured tls-cert is also what this node presents to the
        // others: refuse to start with one they would refuse. Its dates are
        // only warned about: this node's clock may be what is wrong (a board
        // that boots before NTP has synced), and the others use their own.
        if let Some(cert) = &config.tls_cert {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            match node_cert_problem(&identity.chain, roots.clone(), provider, UnixTime::now()) {
                None => {}
                Some(problem) if problem.clock_only => warn!(
                    "{} {}; check this machine's clock and the certificate's dates",
                    cert.display(),
                    problem.reason
                ),
                Some(problem) => {
                    return Err(TlsError::NodeCertificate {
                        cert: cert.clone(),
                        ca: trust,
                        reason: problem.reason,
                    });
                }
            }
        }
        Some(roots)
    } else {
        None
    };
    let rustls_config = server_config(identity, peer_roots)?;
    quinn::crypto::rustls::QuicServerConfig::try_from(rustls_config)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn config(data_dir: &Path, listen: &str) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.to_path_buf(),
            listen: listen.parse().expect("address"),
            ..NodeConfig::default()
        }
    }

    #[test]
    fn first_start_creates_a_ca_and_later_starts_reuse_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(&config(dir.path(), "127.0.0.1:0")).expect("create");
        let tls = dir.path().join(TLS_DIR);
        for file in [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE] {
            assert!(tls.join(file).is_file(), "{file} missing");
        }
        for key in [CA_KEY_FILE, SERVER_KEY_FILE] {
            let mode = std::fs::metadata(tls.join(key))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key} mode {mode:o}");
        }
        let ca = tls.join(CA_CERT_FILE);
        let loopback = subject_alt_names("127.0.0.1".parse().expect("ip"));
        assert_eq!(unusable_reason(&first.chain, &ca, &loopback, now()), None);
        let elsewhere = subject_alt_names("10.1.2.3".parse().expect("ip"));
        let reason = unusable_reason(&first.chain, &ca, &elsewhere, now()).expect("wrong address");
        assert!(reason.contains("for 10.1.2.3"), "{reason}");

        let ca_before = std::fs::read(tls.join(CA_CERT_FILE)).expect("ca");
        let again = load_or_create(&config(dir.path(), "127.0.0.1:0")).expect("reuse");
        assert_eq!(again.chain, first.chain, "server certificate reused");

        // A new listen IP gets a new server certificate from the same CA.
        let moved = load_or_create(&config(dir.path(), "10.1.2.3:7878")).expect("reissue");
        assert_eq!(unusable_reason(&moved.chain, &ca, &elsewhere, now()), None);
        assert_eq!(
            std::fs::read(tls.join(CA_CERT_FILE)).expect("ca"),
            ca_before
        );
        server_config(moved, None).expect("rustls accepts it");
    }

    /// The issuer behind the CA key file `ca_key`.
    fn issuer_of(ca_key: &Path) -> Issuer<'static, KeyPair> {
        let key = KeyPair::from_pem(&read_text(ca_key).expect("ca key")).expect("parse CA key");
        Issuer::new(ca_params().expect("params"), key)
    }

    /// Starts a node once, replaces its server certificate with one made
    /// from `params` by its own CA, and checks that the next start finds it
    /// unusable (the reason holding `why`) and issues a good one.
    fn kept_certificate_is_reissued(params: CertificateParams, why: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), "127.0.0.1:0");
        load_or_create(&cfg).expect("create");
        let tls = dir.path().join(TLS_DIR);
        let key = KeyPair::generate().expect("key");
        let old = params
            .signed_by(&key, &issuer_of(&tls.join(CA_KEY_FILE)))
            .expect("sign");
        let (ca, names) = (tls.join(CA_CERT_FILE), subject_alt_names(cfg.listen.ip()));
        let reason = unusable_reason(&[old.der().clone()], &ca, &names, now()).expect(why);
        assert!(reason.to_lowercase().contains(why), "{reason}");
        write_public(&tls.join(SERVER_CERT_FILE), old.pem().as_bytes()).expect("write");
        write_private(&tls.join(SERVER_KEY_FILE), key.serialize_pem().as_bytes()).expect("write");

        let again = load_or_create(&cfg).expect("reissue");
        assert_ne!(again.chain[0], *old.der(), "not kept");
        assert_eq!(unusable_reason(&again.chain, &ca, &names, now()), None);
    }

    #[test]
    fn a_kept_certificate_without_client_auth_is_reissued() {
        // A server certificate from before node certificates allowed client
        // authentication: same CA and names, serverAuth only.
        let mut params =
            CertificateParams::new(subject_alt_names("127.0.0.1".parse().expect("ip")))
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        kept_certificate_is_reissued(params, "client certificate");
    }

    #[test]
    fn a_kept_certificate_of_a_replaced_ca_is_reissued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), "127.0.0.1:0");
        let first = load_or_create(&cfg).expect("create");
        // The CA files are replaced (say, restored from another node's
        // backup); the kept server certificate is not issued by this CA.
        let tls = dir.path().join(TLS_DIR);
        let (ca, ca_key) = (tls.join(CA_CERT_FILE), tls.join(CA_KEY_FILE));
        create_shared_ca(&ca, &ca_key).expect("new CA");
        let names = subject_alt_names(cfg.listen.ip());
        let reason = unusable_reason(&first.chain, &ca, &names, now()).expect("other issuer");
        assert!(reason.contains("server certificate"), "{reason}");

        let again = load_or_create(&cfg).expect("reissue");
        assert_ne!(again.chain, first.chain, "not kept");
        assert_eq!(unusable_reason(&again.chain, &ca, &names, now()), None);
        verify_with(&ca, &again);
    }

    #[test]
    fn a_board_whose_clock_starts_at_1970_keeps_its_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), "127.0.0.1:0");
        let first = load_or_create(&cfg).expect("create");
        let (ca, names) = (
            dir.path().join(TLS_DIR).join(CA_CERT_FILE),
            subject_alt_names(cfg.listen.ip()),
        );
        let boot = UnixTime::since_unix_epoch(Duration::from_secs(60));
        assert!(
            unusable_reason(&first.chain, &ca, &names, boot).is_some(),
            "not valid yet at the raw clock"
        );
        assert_eq!(
            unusable_reason(&first.chain, &ca, &names, issued_check_time(boot)),
            None
        );
        // Wrong names are still found at that clock.
        let elsewhere = subject_alt_names("10.1.2.3".parse().expect("ip"));
        assert!(unusable_reason(&first.chain, &ca, &elsewhere, issued_check_time(boot)).is_some());
        let today = now();
        assert_eq!(
            issued_check_time(today),
            today,
            "a set clock is used as it is"
        );
    }

    #[test]
    fn a_kept_certificate_that_expired_is_reissued() {
        let mut params =
            CertificateParams::new(subject_alt_names("127.0.0.1".parse().expect("ip")))
                .expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        kept_certificate_is_reissued(params, "expired");
    }

    #[test]
    fn a_configured_node_certificate_the_other_nodes_would_refuse_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        create_shared_ca(&ca, &ca_key).expect("make CA");
        let issuer = issuer_of(&ca_key);
        let other = tempfile::tempdir().expect("tempdir");
        let (other_ca, other_key) = (other.path().join("ca.pem"), other.path().join("ca.key"));
        create_shared_ca(&other_ca, &other_key).expect("other CA");
        let stranger = issuer_of(&other_key);
        let mut cfg = config(dir.path(), "127.0.0.1:0");
        cfg.controller_quorum_voters = vec![format!("0@{}", cfg.listen)];
        cfg.tls_ca = Some(ca.clone());
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        cfg.tls_cert = Some(cert.clone());
        cfg.tls_key = Some(key.clone());
        let cases: [(&str, &Issuer<'_, KeyPair>, &[ExtendedKeyUsagePurpose]); 4] = [
            (
                "ok",
                &issuer,
                &[
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            ("ok", &issuer, &[]),
            ("refused", &issuer, &[ExtendedKeyUsagePurpose::ServerAuth]),
            (
                "refused",
                &stranger,
                &[
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
        ];
        for (want, signer, usages) in cases {
            let pair = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
            params.extended_key_usages = usages.to_vec();
            let issued = params.signed_by(&pair, signer).expect("sign");
            write_public(&cert, issued.pem().as_bytes()).expect("write");
            write_private(&key, pair.serialize_pem().as_bytes()).expect("write");
            match (want, quic_server_config(&cfg)) {
                ("ok", Ok(_)) => {}
                ("refused", Err(e @ TlsError::NodeCertificate { .. })) => {
                    let message = e.to_string();
                    assert!(message.contains("client certificate"), "{message}");
                    assert!(message.contains("issue it again"), "{message}");
                }
                (_, other) => panic!("{want} with {usages:?}: {:?}", other.err()),
            }
        }
        // Dates that this node's clock finds wrong are only warned about:
        // the clock may be what is wrong, and the others check with theirs.
        let pair = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2090, 1, 1);
        params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        let issued = params.signed_by(&pair, &issuer).expect("sign");
        write_public(&cert, issued.pem().as_bytes()).expect("write");
        write_private(&key, pair.serialize_pem().as_bytes()).expect("write");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = ca_roots(&ca).expect("roots");
        let problem = node_cert_problem(&[issued.der().clone()], roots, provider, now())
            .expect("not valid yet");
        assert!(problem.clock_only, "{problem:?}");
        quic_server_config(&cfg).expect("starts, with a warning");
        // Outside a cluster nobody checks it as a client certificate.
        cfg.controller_quorum_voters.clear();
        quic_server_config(&cfg).expect("single node");
    }

    #[test]
    fn nodes_sharing_a_ca_get_certificates_it_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        create_shared_ca(&ca, &ca_key).expect("make CA");
        for node in ["a", "b"] {
            let mut cfg = config(&dir.path().join(node), "127.0.0.1:0");
            cfg.tls_ca = Some(ca.clone());
            cfg.tls_ca_key = Some(ca_key.clone());
            let identity = load_or_create(&cfg).expect("issue");
            assert_eq!(identity.ca_file.as_deref(), Some(ca.as_path()));
            assert_eq!(peer_trust_file(&cfg), ca);
            verify_with(&ca, &identity);
            // The same certificate is the node's client certificate.
            assert!(verify_client_with(&ca, &identity), "a node certificate");
            let presented = node_client_cert(&cfg);
            assert_eq!(
                read_chain(&presented.cert_file).expect("chain"),
                identity.chain
            );
        }
        // A node of another CA is not a node of this cluster.
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = load_or_create(&config(other.path(), "127.0.0.1:0")).expect("own CA");
        assert!(
            !verify_client_with(&ca, &stranger),
            "another CA's certificate"
        );
    }

    /// Whether the listener's client verifier for the CA in `ca_file`
    /// accepts `identity` as a client certificate.
    fn verify_client_with(ca_file: &Path, identity: &Identity) -> bool {
        let verifier = node_verifier(
            ca_roots(ca_file).expect("CA roots"),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .expect("verifier");
        assert!(
            !verifier.client_auth_mandatory(),
            "clients need no certificate"
        );
        verifier
            .verify_client_cert(&identity.chain[0], &[], rustls_pki_types::UnixTime::now())
            .is_ok()
    }

    fn verify_with(ca_file: &Path, identity: &Identity) {
        let roots = ca_roots(ca_file).expect("CA roots");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let server_name =
            rustls_pki_types::ServerName::try_from("127.0.0.1".to_owned()).expect("name");
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            &identity.chain[0],
            &[],
            &server_name,
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .expect("verifies against the shared CA");
    }

    #[test]
    fn the_generated_certificate_verifies_against_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = load_or_create(&config(dir.path(), "127.0.0.1:0")).expect("create");
        let ca = read_chain(&dir.path().join(TLS_DIR).join(CA_CERT_FILE)).expect("ca");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let now = rustls_pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1"] {
            let server_name =
                rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &*verifier,
                &identity.chain[0],
                &[],
                &server_name,
                &[],
                now,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn configured_files_that_are_not_pem_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(&key, "not pem").expect("write");
        let mut c = config(dir.path(), "127.0.0.1:0");
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key);
        let e = load_or_create(&c).expect_err("bad files");
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }
}
