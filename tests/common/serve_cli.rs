//! `smallcap serve` as a child process on a loopback port, for the command-line tests.

/// Kills a `smallcap serve` child if a test fails before stopping it.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `smallcap serve ARGS --addr 127.0.0.1:0` and waits until it is ready; returns the child,
/// its address and the rest of its stderr lines.
pub fn spawn_serve(
    args: &[std::ffi::OsString],
) -> (
    Kill,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    spawn_serve_with_env(args, &[])
}

/// [`spawn_serve`] with these environment variables set for the child.
pub fn spawn_serve_with_env(
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
) -> (
    Kill,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .envs(env.iter().copied())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("SMALLCAP_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Kill(child);
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if line.ends_with("ready") {
            break;
        }
    }
    (
        child,
        addr.expect("the command says where it listens"),
        lines,
    )
}
