//! The web page in headless Chromium: it loads, lists the datastores, uploads a fixture image
//! through its file input, and shows the caption that `smallcap caption` gives for the same image
//! and captions, with the retrieved captions and their scores; picking "no retrieval" recaptions.
//!
//! Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (JSON messages
//! separated by NUL bytes on file descriptors 3 and 4), so no WebSocket client is needed. The
//! test needs `/usr/bin/chromium` (`scripts/test` installs Debian's `chromium`); without it the
//! test fails when `CI` is set, and is skipped with a message otherwise.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture_server::*;
use common::*;
use serde_json::{json, Value};
use smallcap::server::ServerConfig;

const CHROMIUM: &str = "/usr/bin/chromium";

struct Cdp {
    child: Child,
    tx: ChildStdin,
    rx: BufReader<ChildStdout>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    fn launch(profile: &Path) -> Cdp {
        // bash gives Chromium our pipes as fds 3 (commands) and 4 (answers).
        let cmd = format!(
            "exec {CHROMIUM} --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --disable-background-networking --disable-component-update --disable-sync \
             --no-first-run --no-default-browser-check --user-data-dir='{}' \
             --remote-debugging-pipe about:blank 3<&0 4>&1 0</dev/null 1>/dev/null",
            profile.display()
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let tx = child.stdin.take().unwrap();
        let rx = BufReader::new(child.stdout.take().unwrap());
        Cdp {
            child,
            tx,
            rx,
            next: 1,
            session: None,
        }
    }

    /// Sends a command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.tx.write_all(&bytes).unwrap();
        self.tx.flush().unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.rx.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the DevTools pipe");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.eval(expr) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `smallcap caption` for one image.
fn cli_caption(image: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .env("HF_HUB_OFFLINE", "1")
        .arg("caption")
        .arg("--model")
        .arg(fixture("model"))
        .arg("--tokenizer")
        .arg(fixture("tokenizer"))
        .args(extra)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    line["caption"].as_str().unwrap().to_string()
}

#[test]
fn the_page_uploads_an_image_and_shows_the_caption_of_smallcap_caption() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{CHROMIUM} is missing (scripts/test installs Debian's chromium)");
        }
        eprintln!("skipped: {CHROMIUM} is missing (scripts/test installs Debian's chromium)");
        return;
    }
    let s = stores();
    let server = start(ServerConfig::default(), Some(s.retriever()));
    let case = image_cases()[2].clone();
    let image = fixture(&case.image);

    let profile = tempfile::tempdir().unwrap();
    let mut cdp = Cdp::launch(profile.path());
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call("Page.enable", json!({}));
    cdp.call("Page.navigate", json!({"url": url(&server, "/")}));
    cdp.wait_for(
        "document.readyState === 'complete' && document.getElementById('datastore')?.dataset.ready === '1'",
        "the page to list the datastores",
    );
    let options = cdp.eval("[...document.getElementById('datastore').options].map(o => o.value)");
    assert_eq!(options, json!(["coco", "rows100", "__own__", "__none__"]));

    // Choose the file as a user would: the input's change event starts the request.
    let doc = cdp.call("DOM.getDocument", json!({}));
    let input = cdp.call(
        "DOM.querySelector",
        json!({"nodeId": doc["root"]["nodeId"], "selector": "#file"}),
    );
    cdp.call(
        "DOM.setFileInputFiles",
        json!({"nodeId": input["nodeId"], "files": [image.to_str().unwrap()]}),
    );
    cdp.wait_for(
        "document.getElementById('caption').dataset.done === '1'",
        "the caption",
    );
    assert_eq!(
        cdp.eval("document.getElementById('error').textContent"),
        json!("")
    );
    let shown = cdp.eval("document.getElementById('caption').textContent");
    let rows = cdp.eval(
        "[...document.querySelectorAll('#retrieved tbody tr')].map(r => [...r.cells].map(c => c.textContent))",
    );
    let want_rows: Vec<Value> = case.top_captions[..4]
        .iter()
        .zip(&case.top_scores)
        .map(|(c, s)| json!([c, format!("{s:.4}")]))
        .collect();
    assert_eq!(rows, json!(want_rows));
    let mut args = vec!["--k", "4", "--beams", "3", "--early-stopping"];
    for c in &case.top_captions[..4] {
        args.push("--captions");
        args.push(c);
    }
    assert_eq!(shown, json!(cli_caption(&image, &args)));

    // Pick "no retrieval": the page captions the same file again.
    cdp.eval(
        "(() => { const s = document.getElementById('datastore'); s.value = '__none__'; \
         s.dispatchEvent(new Event('change')); return true; })()",
    );
    cdp.wait_for(
        "document.getElementById('caption').dataset.done === '1'",
        "the no-retrieval caption",
    );
    let shown = cdp.eval("document.getElementById('caption').textContent");
    assert_eq!(
        shown,
        json!(cli_caption(&image, &["--no-retrieval", "--early-stopping"]))
    );
    assert_eq!(
        cdp.eval("document.getElementById('retrieved').hidden"),
        json!(true)
    );
    drop(cdp);
    server.shutdown().unwrap();
}
