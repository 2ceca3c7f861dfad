//! Records the target triple, so the node can tell whether a board profile
//! was meant for the binary it runs in.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=EDDY_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
