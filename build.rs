//! Stamps the binary with what `foodpipe --version` reports: the git commit
//! it was built from, the target triple and the optional cargo features
//! that are on.
//!
//! The commit comes from `FOODPIPE_GIT_COMMIT` when set (a container build
//! has no `.git`; the Dockerfile passes it as a build argument), else from
//! `git rev-parse`, else it is "unknown". Nothing here compiles C.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FOODPIPE_GIT_COMMIT");
    let commit = env::var("FOODPIPE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FOODPIPE_GIT_COMMIT={commit}");

    // Whether the C runtime is static is asked of the compiler itself, with
    // cfg!(target_feature = "crt-static") in main.rs: cargo's
    // CARGO_CFG_TARGET_FEATURE leaves it out for musl targets.
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown-target".to_owned());
    println!("cargo:rustc-env=FOODPIPE_BUILD_TARGET={target}");

    // Cargo sets CARGO_FEATURE_<NAME> for every enabled feature of this package.
    let mut features: Vec<String> = env::vars()
        .filter_map(|(key, _)| key.strip_prefix("CARGO_FEATURE_").map(str::to_owned))
        .filter(|name| name != "DEFAULT")
        .map(|name| name.to_lowercase().replace('_', "-"))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(",")
    };
    println!("cargo:rustc-env=FOODPIPE_FEATURES={features}");
}

/// The short commit of HEAD, with rerun triggers on the files that move
/// when HEAD does; `None` outside a git checkout or without git.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD itself, the branch it points at, and packed refs.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.extend(git(&["rev-parse", "--git-path", "packed-refs"]));
    // A missing path would make cargo rerun this script on every build.
    for path in watched.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(commit)
}
