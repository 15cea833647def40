//! The real `wallet` binary as a child process: started on 127.0.0.1:0 (its address read from
//! its first stdout line), stopped with SIGTERM or SIGKILL, and its subcommands run to the end.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `wallet` command on `db` (a SQLite file or a PostgreSQL URL), with no inherited
/// `WALLET_*` setting, cheap password hashing and no logs (a test overrides any of these with
/// `.env` and `.stderr`).
pub fn wallet(db: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wallet"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WALLET_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--db")
        .arg(db)
        .env("WALLET_ARGON2_MEMORY_KIB", "64")
        .env("WALLET_ARGON2_ITERATIONS", "1")
        .env("WALLET_LOG", "off")
        .stderr(Stdio::null());
    cmd
}

/// Runs a subcommand to its end, feeding `stdin` when given; fails the test after `within`.
pub fn run(mut cmd: Command, stdin: Option<&str>, within: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the wallet binary");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(text.as_bytes());
    }
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still ran after {within:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// `wallet --db DB verify`: its exit code and standard output.
pub fn verify(db: impl AsRef<OsStr>) -> (Option<i32>, String) {
    let mut cmd = wallet(db);
    cmd.arg("verify");
    let out = run(cmd, None, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A serving child process.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `cmd` (a `wallet(db)` command) serving on a port the kernel picks.
    pub fn start(mut cmd: Command) -> Server {
        cmd.args(["--listen", "127.0.0.1:0", "--snapshot-cron", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the wallet binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address, then keeps draining stdout so that the child never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("wallet listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the binary never printed its address ({status:?})");
            }
        };
        Server { child, base }
    }

    pub fn sigterm(&self) {
        // SAFETY: sends SIGTERM to the child this test started.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// SIGKILL, and reaps the child.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits for the child to exit; fails the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply (the harness's own type); `call` gives `Err` when no reply came (connection refused
/// or reset, timeout).
pub use crate::helpers::Resp as Reply;

pub fn call(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Token {t}"));
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let result = match body {
        Some(b) => agent.run(
            req.header("Content-Type", "application/json")
                .body(b.to_string())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = result.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    })
}
