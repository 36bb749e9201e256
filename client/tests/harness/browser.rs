//! A real browser (Debian's Chromium, headless) driven over the Chrome
//! DevTools Protocol: pages stay open while a test watches them change,
//! the mouse moves over them, and pictures of their parts are saved.
//!
//! Chromium picks its own debugging port (`--remote-debugging-port=0`) and
//! writes it to `DevToolsActivePort` in its profile directory, so no port is
//! chosen here and released before it is used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The browser: `$DASKRS_CHROMIUM`, else Debian's.
pub fn chromium() -> String {
    let path = std::env::var("DASKRS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "no browser at {path}: run scripts/install-chromium.sh (or set DASKRS_CHROMIUM)"
    );
    path
}

/// Flags for a quiet headless browser with a profile of its own.
pub fn headless_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// A tab, attached to the browser's connection.
pub struct Page {
    session: String,
}

impl Browser {
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let child = Command::new(chromium())
            .args(headless_args(profile.path()))
            .arg("--remote-debugging-port=0")
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        let mut child = child;
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        // Written once the debugging port listens: its port, then the path.
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break (port.trim().to_string(), path.trim().to_string());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited before it listened: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not listen within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("the browser's debugging socket");
        Browser {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Sends a command (to a page's session, if given) and waits for its
    /// answer; events that come meanwhile are let go.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// As [`Browser::call`], with the protocol's error (such as a page
    /// that is navigating) given back.
    async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("the browser takes a command");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("the browser did not answer {method} within 60 s"))
                .unwrap_or_else(|| panic!("the browser closed its socket during {method}"))
                .expect("a frame from the browser");
            let Message::Text(text) = frame else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("JSON from the browser");
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            return match answer.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(answer["result"].clone()),
            };
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Page { session }
    }

    /// The value of a JavaScript expression in the page (awaited when it is
    /// a promise).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.try_eval(page, expression)
            .await
            .unwrap_or_else(|e| panic!("{expression} raised: {e}"))
    }

    /// The value of an expression, or what it raised.
    async fn try_eval(&mut self, page: &Page, expression: &str) -> Result<Value, Value> {
        let result = self
            .try_call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        match result.get("exceptionDetails") {
            Some(e) => Err(e["exception"]["description"].clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Waits until `expression` is true in the page, checking every 50 ms;
    /// while the page is not there yet, it may raise.
    pub async fn wait_for(&mut self, page: &Page, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(page, &format!("Boolean({expression})")).await;
            if last == Ok(json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                let sections = self
                    .eval(
                        page,
                        "[...document.querySelectorAll('body > div, section')].map(e => e.outerHTML.slice(0, 2000)).join('\\n')",
                    )
                    .await;
                let sections = sections.as_str().unwrap_or_default().to_string();
                panic!("not true within {timeout:?}: {expression} (last: {last:?})\n{sections}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves the mouse to `(x, y)` of the page's viewport.
    pub async fn mouse_move(&mut self, page: &Page, x: f64, y: f64) {
        self.call(
            Some(&page.session),
            "Input.dispatchMouseEvent",
            json!({ "type": "mouseMoved", "x": x, "y": y }),
        )
        .await;
    }

    /// Saves a PNG of the element `selector` to `path`.
    pub async fn screenshot(&mut self, page: &Page, selector: &str, path: &Path) {
        let rect = self
            .eval(
                page,
                &format!(
                    "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect();
                       return {{ x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height }}; }})()"
                ),
            )
            .await;
        let shot = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {
                        "x": rect["x"], "y": rect["y"],
                        "width": rect["width"], "height": rect["height"], "scale": 1
                    }
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 from the browser");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test keeps its screenshots: `target/screenshots/` of the target
/// directory the tests were built in.
pub fn screenshot_dir() -> PathBuf {
    // The test binary is target/debug/deps/<name>.
    let exe = std::env::current_exe().expect("the test's own path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary sits in <target>/<profile>/deps");
    target.join("screenshots")
}
