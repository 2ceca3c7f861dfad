//! WASI grants: what of the host a plugin may reach, from reserved keys of
//! its own config (`eddy plugin add NAME --wasm F --config wasi.dirs=/srv/ref`).
//!
//! Every plugin is linked against WASI 0.2 (wasmtime-wasi, synchronous
//! bindings), but its context holds only what its config grants:
//!
//! | key | value | grants |
//! |---|---|---|
//! | `wasi.env` | `NAME[,NAME...]` | these variables of the node's environment (an unset one stays unset) |
//! | `wasi.dirs` | `HOST[:GUEST][,...]` | the host directory `HOST` (absolute), read-only, seen by the plugin as `GUEST` (default: the same path) |
//! | `wasi.dirs.rw` | `HOST[:GUEST][,...]` | the same, read-write |
//! | `wasi.network` | `IP:PORT[,...]` (`[IPv6]:PORT`) | TCP/UDP to, or bind/listen on, exactly these socket addresses; no name lookup |
//!
//! A key given more than once adds to its list. Without any grant a plugin
//! has an empty environment, no directories, no sockets and no stdio from
//! the host (stdin is closed, what it writes to stdout/stderr is dropped);
//! what it reaches for fails with an error inside the plugin. Clocks and
//! random numbers are always there: they reveal nothing about the host that
//! the `host` interface's clock does not. Any other `wasi.*` key is refused,
//! so a misspelt grant stops `plugin add` instead of silently granting
//! nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// The prefix of the reserved config keys.
pub const WASI_KEY_PREFIX: &str = "wasi.";
/// Environment variables a plugin may be granted.
pub const KEY_ENV: &str = "wasi.env";
/// Read-only directories.
pub const KEY_DIRS: &str = "wasi.dirs";
/// Read-write directories.
pub const KEY_DIRS_RW: &str = "wasi.dirs.rw";
/// Socket addresses.
pub const KEY_NETWORK: &str = "wasi.network";
/// Most entries one grant key may list (over all its occurrences).
pub const GRANT_ENTRIES_MAX: usize = 64;

/// The WASI 0.2 interfaces the host links (wasmtime-wasi's synchronous
/// `wasi:cli/imports`), without their versions.
const LINKED_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stderr",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

/// Whether the host links the import `name` (an `eddy:plugin` interface,
/// or one of [`LINKED_INTERFACES`] at any 0.2 version, which wasmtime's
/// linker matches by semver).
pub fn is_provided(name: &str) -> bool {
    if name.starts_with("eddy:plugin/") {
        return true;
    }
    name.split_once('@').is_some_and(|(interface, version)| {
        version.starts_with("0.2.") && LINKED_INTERFACES.contains(&interface)
    })
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host (absolute).
    pub host: PathBuf,
    /// Its name inside the plugin.
    pub guest: String,
    /// Whether the plugin may change what is in it.
    pub writable: bool,
}

/// What a plugin's config grants it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Names of the node's environment variables passed through.
    pub env: Vec<String>,
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// The only socket addresses it may use.
    pub network: Vec<SocketAddr>,
}

impl Grants {
    /// Reads the grants from a plugin's config and checks them (the
    /// directories must exist now). The error names the key and what to
    /// fix.
    pub fn from_config(config: &[(String, String)]) -> Result<Grants, String> {
        let mut grants = Grants::default();
        for (key, value) in config {
            if !key.starts_with(WASI_KEY_PREFIX) {
                continue;
            }
            let entries = value.split(',').map(str::trim).filter(|e| !e.is_empty());
            match key.as_str() {
                KEY_ENV => {
                    for name in entries {
                        if name.contains(['=', '\0']) {
                            return Err(format!(
                                "{KEY_ENV}: {name:?} is not a variable name; list names only, \
                                 e.g. {KEY_ENV}=TZ,SITE_ID (values come from the node's \
                                 environment)"
                            ));
                        }
                        if !grants.env.iter().any(|n| n == name) {
                            grants.env.push(name.to_owned());
                        }
                    }
                    check_count(KEY_ENV, grants.env.len())?;
                }
                KEY_DIRS | KEY_DIRS_RW => {
                    let writable = key == KEY_DIRS_RW;
                    for entry in entries {
                        grants.dirs.push(dir_grant(key, entry, writable)?);
                    }
                    check_count(key, grants.dirs.len())?;
                }
                KEY_NETWORK => {
                    for entry in entries {
                        let addr = socket_addr(entry)?;
                        if !grants.network.contains(&addr) {
                            grants.network.push(addr);
                        }
                    }
                    check_count(KEY_NETWORK, grants.network.len())?;
                }
                other => {
                    return Err(format!(
                        "unknown grant {other:?}: the `wasi.` keys a plugin config may set are \
                         {KEY_ENV}, {KEY_DIRS}, {KEY_DIRS_RW} and {KEY_NETWORK}"
                    ));
                }
            }
        }
        let mut guests: Vec<&str> = grants.dirs.iter().map(|d| d.guest.as_str()).collect();
        guests.sort_unstable();
        if let Some(pair) = guests.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "{KEY_DIRS}: two directories are granted as {:?}; give each its own guest path \
                 (HOST:GUEST)",
                pair[0]
            ));
        }
        Ok(grants)
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.dirs.is_empty() && self.network.is_empty()
    }

    /// Whether the plugin may use `addr` for `usage`. Connecting, sending,
    /// binding and listening need a granted address; binding the wildcard
    /// address with port 0 is what the OS does for an outgoing socket, so it
    /// is allowed (listening on it is not). Accepted clients and received
    /// datagrams arrive on a socket that already passed these checks.
    pub fn allows(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
                if addr.ip().is_unspecified() && addr.port() == 0 =>
            {
                !self.network.is_empty()
            }
            SocketAddrUse::TcpAccept | SocketAddrUse::UdpReceive => !self.network.is_empty(),
            _ => self.network.contains(&addr),
        }
    }

    /// The granted variables that are set in the node's environment, with
    /// their values.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect()
    }

    /// A WASI context holding exactly what is granted: one per store, made
    /// when an instance is created (never per call).
    pub fn context(self: &Arc<Self>) -> Result<WasiCtx, String> {
        let mut b = WasiCtxBuilder::new();
        // Calls run on blocking threads already: file operations need no
        // hop through another thread pool.
        b.allow_blocking_current_thread(true);
        b.envs(&self.environment());
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                format!(
                    "cannot open granted directory {}: {e}; check that it exists and the node \
                     may read it",
                    dir.host.display()
                )
            })?;
        }
        // Sockets at all only with a network grant; then every address is
        // checked against it.
        b.allow_ip_name_lookup(false);
        b.allow_tcp(!self.network.is_empty());
        b.allow_udp(!self.network.is_empty());
        if !self.network.is_empty() {
            let grants = self.clone();
            b.socket_addr_check(move |addr, usage| {
                let allowed = grants.allows(addr, usage);
                Box::pin(async move { allowed })
            });
        }
        Ok(b.build())
    }
}

fn check_count(key: &str, n: usize) -> Result<(), String> {
    if n > GRANT_ENTRIES_MAX {
        return Err(format!(
            "{key}: {n} entries; a plugin may be granted at most {GRANT_ENTRIES_MAX}"
        ));
    }
    Ok(())
}

fn dir_grant(key: &str, entry: &str, writable: bool) -> Result<DirGrant, String> {
    let (host, guest) = match entry.split_once(':') {
        Some((host, guest)) => (host, guest),
        None => (entry, entry),
    };
    let host_path = Path::new(host);
    if !host_path.is_absolute() {
        return Err(format!(
            "{key}: {host:?} is not an absolute path; grant directories as /abs/path or \
             /abs/path:/name-in-plugin"
        ));
    }
    if guest.is_empty() {
        return Err(format!(
            "{key}: {entry:?} has an empty guest path; write HOST or HOST:GUEST"
        ));
    }
    match std::fs::metadata(host_path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{key}: {host} is not a directory; grant the directory that holds the files"
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{key}: directory {host} does not exist on the node; create it or fix the path"
            ));
        }
        Err(e) => return Err(format!("{key}: cannot use {host}: {e}")),
    }
    Ok(DirGrant {
        host: host_path.to_path_buf(),
        guest: guest.to_owned(),
        writable,
    })
}

fn socket_addr(entry: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = entry.parse().map_err(|_| {
        format!(
            "{KEY_NETWORK}: {entry:?} is not IP:PORT (e.g. 127.0.0.1:1883 or [::1]:1883); \
             host names are not allowed: plugins get no name lookup"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{KEY_NETWORK}: {entry:?} has port 0; name the port the plugin may use"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_wasi_keys_grant_nothing() {
        let g = Grants::from_config(&config(&[("mode", "ok"), ("wasi", "x")])).unwrap();
        assert!(g.is_empty());
        let any: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let wild: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(!g.allows(any, SocketAddrUse::TcpConnect));
        assert!(!g.allows(wild, SocketAddrUse::TcpBind));
        assert!(!g.allows(any, SocketAddrUse::TcpAccept));
    }

    #[test]
    fn grants_are_parsed_and_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let a = a.to_str().unwrap().to_owned();
        let root = dir.path().to_str().unwrap().to_owned();
        let g = Grants::from_config(&config(&[
            ("wasi.env", "TZ, SITE_ID"),
            ("wasi.env", "TZ,LANG"),
            ("wasi.dirs", &format!("{a}:/ref")),
            ("wasi.dirs.rw", &root),
            ("wasi.network", "127.0.0.1:1883,[::1]:8080"),
        ]))
        .unwrap();
        assert_eq!(g.env, ["TZ", "SITE_ID", "LANG"]);
        assert_eq!(
            g.dirs,
            [
                DirGrant {
                    host: a.clone().into(),
                    guest: "/ref".into(),
                    writable: false
                },
                DirGrant {
                    host: root.clone().into(),
                    guest: root.clone(),
                    writable: true
                },
            ]
        );
        assert_eq!(g.network.len(), 2);
        let g = Arc::new(g);
        g.context().unwrap();
    }

    #[test]
    fn only_granted_addresses_are_usable() {
        let g = Grants::from_config(&config(&[("wasi.network", "127.0.0.1:1883")])).unwrap();
        let granted: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let other_port: SocketAddr = "127.0.0.1:1884".parse().unwrap();
        let other_ip: SocketAddr = "127.0.0.2:1883".parse().unwrap();
        for usage in [
            SocketAddrUse::TcpConnect,
            SocketAddrUse::TcpBind,
            SocketAddrUse::TcpListen,
            SocketAddrUse::UdpBind,
            SocketAddrUse::UdpSend,
        ] {
            assert!(g.allows(granted, usage), "{usage:?}");
            assert!(!g.allows(other_port, usage), "{usage:?}");
            assert!(!g.allows(other_ip, usage), "{usage:?}");
        }
        // The implicit bind of an outgoing socket, but not listening on it.
        let wild: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(g.allows(wild, SocketAddrUse::TcpBind));
        assert!(!g.allows(wild, SocketAddrUse::TcpListen));
        let wild_port: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert!(!g.allows(wild_port, SocketAddrUse::TcpBind));
    }

    #[test]
    fn bad_grants_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let missing = dir.path().join("missing");
        let cases = [
            ("wasi.dir", "/tmp".to_owned(), "unknown grant"),
            (
                "wasi.dirs",
                "relative/path".to_owned(),
                "not an absolute path",
            ),
            (
                "wasi.dirs",
                missing.display().to_string(),
                "does not exist on the node",
            ),
            (
                "wasi.dirs.rw",
                file.display().to_string(),
                "is not a directory",
            ),
            ("wasi.dirs", "/tmp:".to_owned(), "empty guest path"),
            ("wasi.dirs", "/tmp:/x,/var:/x".to_owned(), "two directories"),
            ("wasi.network", "localhost:80".to_owned(), "no name lookup"),
            ("wasi.network", "127.0.0.1".to_owned(), "is not IP:PORT"),
            ("wasi.network", "127.0.0.1:0".to_owned(), "port 0"),
            ("wasi.env", "A=b".to_owned(), "not a variable name"),
        ];
        for (key, value, want) in cases {
            let err = Grants::from_config(&config(&[(key, &value)])).unwrap_err();
            assert!(err.contains(want), "{key}={value}: {err}");
            assert!(
                err.contains(key.trim_end_matches(".rw")) || key == "wasi.dir",
                "{err}"
            );
        }
        let many: Vec<String> = (1..=GRANT_ENTRIES_MAX + 1)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let err = Grants::from_config(&config(&[("wasi.network", &many.join(","))])).unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn linked_imports_are_known_by_interface_and_0_2_version() {
        assert!(is_provided("wasi:cli/environment@0.2.0"));
        assert!(is_provided("wasi:filesystem/types@0.2.6"));
        assert!(is_provided("eddy:plugin/host@0.2.0"));
        assert!(!is_provided("wasi:http/types@0.2.0"));
        assert!(!is_provided("wasi:cli/environment@0.3.0"));
        assert!(!is_provided("wasi:cli/environment"));
    }

    #[test]
    fn only_named_variables_pass() {
        // PATH is set wherever tests run; HOME is not granted.
        let path = std::env::var("PATH").unwrap();
        let g =
            Grants::from_config(&config(&[("wasi.env", "PATH,EDDY_UNSET_VARIABLE_X")])).unwrap();
        assert_eq!(g.environment(), [("PATH".to_owned(), path)]);
        assert!(Grants::default().environment().is_empty());
    }
}
