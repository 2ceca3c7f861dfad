//! `misbehave`: a test interceptor that misbehaves on purpose, to prove the
//! node contains it. Config `mode`:
//! - `ok`: keeps every record (and tags it with the `tag` config as header
//!   `misbehave-tag`, when set);
//! - `loop`: never returns;
//! - `trap`: panics (a Wasm trap);
//! - `oom`: allocates without end;
//! - `read-file`: tries to read the host file named by `path` (default
//!   `/etc/hostname`) and, if that works (only inside a directory granted
//!   with `wasi.dirs`), rejects every record with the file's contents as the
//!   reason;
//! - `write-file`: writes `misbehave was here` to `path` and keeps every
//!   record (works only inside a directory granted with `wasi.dirs.rw`);
//! - `env`: tags every record with header `misbehave-env`: every variable
//!   the plugin sees, as `NAME=value` sorted and joined by `;` (only those
//!   granted with `wasi.env`);
//! - `connect`: opens a TCP connection to `addr` (only one granted with
//!   `wasi.network` works), sends `misbehave connected\n` and tags every
//!   record with header `misbehave-net: connected`.
//!
//! `after` (default 0): behave (`ok`) for this many calls first.

use eddy_plugin_sdk::Config;
use eddy_plugin_sdk::interceptor::{Interceptor, Records, Verdicts};

/// The plugin.
pub struct Misbehave {
    mode: String,
    tag: Option<String>,
    path: String,
    addr: String,
    after: u64,
    calls: u64,
}

impl Interceptor for Misbehave {
    fn new(config: Config) -> Result<Self, String> {
        let mode = config.get("mode").unwrap_or("ok").to_owned();
        if ![
            "ok",
            "loop",
            "trap",
            "oom",
            "read-file",
            "write-file",
            "env",
            "connect",
        ]
        .contains(&mode.as_str())
        {
            return Err(format!("unknown mode {mode:?}"));
        }
        Ok(Misbehave {
            mode,
            tag: config.get("tag").map(str::to_owned),
            path: config.get("path").unwrap_or("/etc/hostname").to_owned(),
            addr: config.get("addr").unwrap_or("127.0.0.1:1").to_owned(),
            after: config.parse_or("after", 0)?,
            calls: 0,
        })
    }

    fn intercept(
        &mut self,
        _topic: &str,
        records: &Records,
        out: &mut Verdicts,
    ) -> Result<(), String> {
        self.calls += 1;
        let mode = if self.calls <= self.after {
            "ok"
        } else {
            self.mode.as_str()
        };
        match mode {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("misbehave: trapping on purpose"),
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "read-file" => match std::fs::read_to_string(&self.path) {
                Ok(contents) => {
                    for _ in records.iter() {
                        out.reject(format!("read {}: {contents}", self.path));
                    }
                    Ok(())
                }
                Err(e) => Err(format!("cannot read {}: {e}", self.path)),
            },
            "write-file" => match std::fs::write(&self.path, "misbehave was here") {
                Ok(()) => {
                    for _ in records.iter() {
                        out.keep();
                    }
                    Ok(())
                }
                Err(e) => Err(format!("cannot write {}: {e}", self.path)),
            },
            "env" => {
                let mut vars: Vec<String> =
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                let vars = vars.join(";");
                for _ in records.iter() {
                    out.rewrite().header("misbehave-env", Some(vars.as_bytes()));
                }
                Ok(())
            }
            "connect" => {
                use std::io::Write as _;
                let mut stream = std::net::TcpStream::connect(&self.addr)
                    .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
                stream
                    .write_all(b"misbehave connected\n")
                    .map_err(|e| format!("cannot write to {}: {e}", self.addr))?;
                for _ in records.iter() {
                    out.rewrite()
                        .header("misbehave-net", Some(&b"connected"[..]));
                }
                Ok(())
            }
            _ => {
                for _ in records.iter() {
                    match &self.tag {
                        Some(tag) => {
                            out.rewrite().header("misbehave-tag", Some(tag.as_bytes()));
                        }
                        None => out.keep(),
                    }
                }
                Ok(())
            }
        }
    }
}

eddy_plugin_sdk::export!(interceptor: Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_plugin_sdk::interceptor::Outcome;

    #[test]
    fn ok_mode_keeps_or_tags() {
        let mut p = Misbehave::new(Config::new([("tag", "v2")])).unwrap();
        let records = Records::with_values(["a"]);
        let mut out = Verdicts::with_capacity(1);
        p.intercept("t", &records, &mut out).unwrap();
        assert!(matches!(
            out.outcome(0, &records),
            Some(Outcome::Rewritten(r)) if r.header("misbehave-tag") == Some(&b"v2"[..])
        ));
        assert!(Misbehave::new(Config::new([("mode", "nope")])).is_err());
    }
}
