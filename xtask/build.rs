//! Records the host target triple, to tell native from cross builds.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=XTASK_HOST_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
