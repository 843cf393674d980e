//! The dashboard over HTTP on loopback: the login wall, what the pages show, the promote and
//! pause forms with their CSRF token, escaping of hostile machine ids, the etcd discovery page
//! (escaping what members registered, its delete forms), and the page as headless
//! Chromium renders it (driven over the DevTools protocol, with a screenshot kept in
//! `build/ci/dashboard/`).

// ureq's error is large; these helpers only hand it to assertions.
#![allow(clippy::result_large_err)]

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{package, with_events, APP};
use kiln_server::clock::ManualClock;
use kiln_server::context::ServerContext;
use kiln_server::http::RunningServer;
use kiln_server::store::SqliteStore;
use kiln_server::{Engine, EngineConfig};
use kiln_updater::omaha::Event;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token-0123456789";
/// 2026-11-22 00:00 UTC, so the page shows plausible dates.
const START: u64 = 1_795_305_600;
const HOSTILE: &str = "<script>alert(1)</script>";

struct Fixture {
    server: RunningServer,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }
}

/// A server whose app has 1.1.0 on alpha, with machines that checked in over a few hours: one
/// updated, one failed with a hash mismatch, some still on 1.0.0, one with a hostile id.
fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let engine = Engine::open(
        Box::new(store_with_a_hostile_machine()),
        Arc::new(clock.clone()),
        EngineConfig::new("http://127.0.0.1:1/"),
    )
    .unwrap();
    seed(&engine, &clock);
    let engine = Arc::new(engine);
    let ctx = Arc::new(ServerContext {
        engine: Arc::clone(&engine),
        token: TOKEN.into(),
        data_dir: dir.path().to_owned(),
        verifier: None,
    });
    let server = RunningServer::start(ctx, "127.0.0.1:0".parse().unwrap(), 2).unwrap();
    Fixture {
        server,
        engine,
        _dir: dir,
    }
}

/// A database holding a machine whose id is markup. The server records no such id today (see
/// the engine's admission), but a database written by an older one, or by hand, may hold it.
fn store_with_a_hostile_machine() -> SqliteStore {
    use kiln_server::model::{AppRecord, Instance, Status};
    use kiln_server::store::{Store, Write};
    let mut store = SqliteStore::in_memory().unwrap();
    let app = AppRecord {
        id: APP.into(),
        name: APP.into(),
    };
    let machine = Instance {
        machine_id: HOSTILE.into(),
        app_id: APP.into(),
        version: "1.0.0".into(),
        channel: "beta".into(),
        status: Status::Idle,
        target_version: None,
        granted_at: None,
        last_check: START,
        last_error: None,
        boot_id: None,
        first_seen: START,
    };
    store
        .apply(&[Write::App(app), Write::Instance(machine)])
        .unwrap();
    store
}

fn seed(engine: &Engine, clock: &ManualClock) {
    engine.publish(package("1.0.0"), Some("beta")).unwrap();
    for machine in ["m1", "m2", "m3", "m4"] {
        // Checking in on beta, which offers what they run: nothing is granted yet.
        common::check(engine, common::app(machine, "1.0.0", "beta"));
    }
    clock.advance(3600);
    engine.publish(package("1.1.0"), Some("alpha")).unwrap();
    // Long enough that m1's reboot 2.5 h after its grant is not a timeout.
    let policy = kiln_server::model::Policy {
        update_timeout_secs: 6 * 3600,
        ..Default::default()
    };
    engine.set_policy(APP, "alpha", policy).unwrap();
    for machine in ["m1", "m2"] {
        let answer = common::check(engine, common::app(machine, "1.0.0", "alpha"));
        assert!(common::offered(&answer), "{machine} is offered 1.1.0");
    }
    clock.advance(1800);
    let events = vec![Event::download_started(), Event::installed()];
    common::check(
        engine,
        with_events(common::app("m1", "1.0.0", "alpha"), events),
    );
    // 10: PayloadHashMismatchError.
    common::check(
        engine,
        with_events(common::app("m2", "1.0.0", "alpha"), vec![Event::error(10)]),
    );
    clock.advance(3600);
    let mut after = common::app("m1", "1.1.0", "alpha");
    after.events = vec![Event::updated_after_reboot("1.0.0")];
    after.bootid = Some("{boot-2}".into());
    common::check(engine, after);
    clock.advance(600);
}

fn agent() -> ureq::Agent {
    // No redirects followed: the tests look at the 303s and their cookies themselves.
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(20))
        .build()
}

/// Status, `Set-Cookie` and body of a response, whatever its status.
fn outcome(result: Result<ureq::Response, ureq::Error>) -> (u16, Option<String>, String) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("transport error: {err}"),
    };
    let status = response.status();
    let cookie = response.header("set-cookie").map(str::to_owned);
    (status, cookie, response.into_string().unwrap())
}

fn get(f: &Fixture, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut request = agent().get(&f.url(path));
    if let Some(cookie) = cookie {
        request = request.set("Cookie", cookie);
    }
    let (status, _, body) = outcome(request.call());
    (status, body)
}

fn post_form(f: &Fixture, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> u16 {
    let mut request = agent().post(&f.url(path));
    if let Some(cookie) = cookie {
        request = request.set("Cookie", cookie);
    }
    outcome(request.send_form(fields)).0
}

/// Logs in; returns the `Cookie` header value to send and the page's CSRF token.
fn login(f: &Fixture) -> (String, String) {
    let (status, set_cookie, _) = outcome(
        agent()
            .post(&f.url("/dashboard/login"))
            .send_form(&[("token", TOKEN)]),
    );
    assert_eq!(status, 303, "a good token redirects to the dashboard");
    let set_cookie = set_cookie.expect("login sets the session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(TOKEN), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let (status, page) = get(f, &app_path(), Some(&cookie));
    assert_eq!(status, 200);
    (cookie, csrf_of(&page))
}

fn app_path() -> String {
    format!("/dashboard/apps/{APP}")
}

fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("the page has a CSRF field") + marker.len();
    let end = start + page[start..].find('"').unwrap();
    page[start..end].to_owned()
}

fn channel(engine: &Engine, name: &str) -> kiln_server::model::ChannelRecord {
    let app = engine.app(APP).unwrap();
    app.channels
        .into_iter()
        .find(|c| c.record.name == name)
        .unwrap_or_else(|| panic!("no channel {name}"))
        .record
}

#[test]
fn without_a_session_only_the_login_page_is_shown() {
    let f = start();
    for path in ["/dashboard/", app_path().as_str()] {
        let (status, body) = get(&f, path, None);
        assert_eq!(status, 401, "{path}");
        assert!(
            body.contains("name=\"token\""),
            "{path} shows the login form"
        );
        assert!(
            !body.contains("1.1.0") && !body.contains("m1"),
            "{path} shows no data"
        );
    }
    let (status, _) = get(&f, "/dashboard/", Some("kiln_dashboard=forged"));
    assert_eq!(status, 401, "a made-up session id opens nothing");

    let (status, set_cookie, body) = outcome(
        agent()
            .post(&f.url("/dashboard/login"))
            .send_form(&[("token", "wrong")]),
    );
    assert_eq!(status, 401);
    assert!(set_cookie.is_none(), "a wrong token gets no session");
    assert!(body.contains("not the server&#39;s admin token"));

    let before = channel(&f.engine, "alpha");
    let path = format!("{}/channels/alpha/pause", app_path());
    assert_eq!(post_form(&f, &path, None, &[("csrf", "x")]), 401);
    assert_eq!(channel(&f.engine, "alpha"), before, "nothing changed");
}

#[test]
fn pages_show_versions_counts_errors_and_the_chart() {
    let f = start();
    let (cookie, _) = login(&f);
    let (status, overview) = get(&f, "/dashboard/", Some(&cookie));
    assert_eq!(status, 200);
    assert!(overview.contains(&format!("href=\"{}\"", app_path())));
    assert!(overview.contains("5 machine(s)"));

    let (status, page) = get(&f, &app_path(), Some(&cookie));
    assert_eq!(status, 200);
    // The alpha channel offers 1.1.0; the fleet table counts machines per version and status.
    assert!(
        page.contains("<tr data-channel=\"alpha\"><td>alpha</td><td class=\"version\">1.1.0</td>")
    );
    let fleet_row = |version: &str| {
        let start = page
            .find(&format!("<tr data-version=\"{version}\">"))
            .unwrap_or_else(|| panic!("no fleet row for {version}"));
        let end = start + page[start..].find("</tr>").unwrap();
        page[start..end].to_owned()
    };
    // Columns: idle granted downloading installed complete error rolled-back total.
    assert!(fleet_row("1.0.0").ends_with(
        "<td>3</td><td>0</td><td>0</td><td>0</td><td>0</td><td>1</td><td>0</td><td>4</td>"
    ));
    assert!(fleet_row("1.1.0").ends_with(
        "<td>0</td><td>0</td><td>0</td><td>0</td><td>1</td><td>0</td><td>0</td><td>1</td>"
    ));
    assert!(page.contains("<td class=\"machines-total\">5</td>"));
    // The error, with its code decoded.
    assert!(page.contains("<td>10</td><td class=\"error-name\">PayloadHashMismatchError</td>"));
    assert!(!page.contains("UpdateTimedOut"), "m1 finished in time");
    // The chart: inline SVG, a legend entry per version, bars for both versions.
    assert!(page.contains("<svg class=\"chart\""));
    assert!(page.contains("1.1.0: 1 machine(s) from 2026-11-22 02:00"));
    assert!(page.contains("1.0.0: 5 machine(s) from 2026-11-22 00:00"));
    // Machines with their last check-in.
    assert!(page.contains("<td class=\"machine\">m4</td><td>beta</td><td>1.0.0</td>"));
    assert!(page.contains("2026-11-22 00:00 (2 h ago)"));

    let (_, again) = get(&f, &app_path(), Some(&cookie));
    assert_eq!(page, again, "the same state renders the same page");
}

#[test]
fn promote_and_pause_forms_change_the_rollout() {
    let f = start();
    let (cookie, csrf) = login(&f);
    let promote = format!("{}/promote", app_path());

    // Without the CSRF token, or with another, the form is refused and nothing changes.
    assert_eq!(
        post_form(
            &f,
            &promote,
            Some(&cookie),
            &[("from", "alpha"), ("to", "beta")]
        ),
        403
    );
    assert_eq!(
        post_form(
            &f,
            &promote,
            Some(&cookie),
            &[("from", "alpha"), ("to", "beta"), ("csrf", "0000")]
        ),
        403
    );
    assert_eq!(channel(&f.engine, "beta").version.as_deref(), Some("1.0.0"));

    let fields = [("from", "alpha"), ("to", "beta"), ("csrf", csrf.as_str())];
    assert_eq!(post_form(&f, &promote, Some(&cookie), &fields), 303);
    assert_eq!(channel(&f.engine, "beta").version.as_deref(), Some("1.1.0"));

    // A refused action says why, escaped.
    let fields = [("from", "alpha"), ("to", "<b>"), ("csrf", csrf.as_str())];
    assert_eq!(post_form(&f, &promote, Some(&cookie), &fields), 400);

    let pause = format!("{}/channels/alpha/pause", app_path());
    let resume = format!("{}/channels/alpha/resume", app_path());
    assert_eq!(
        post_form(&f, &pause, Some(&cookie), &[("csrf", &csrf)]),
        303
    );
    assert!(channel(&f.engine, "alpha").paused);
    let (_, page) = get(&f, &app_path(), Some(&cookie));
    assert!(page.contains("<td class=\"state paused\">paused</td>"));
    assert!(page.contains(&format!("action=\"{resume}\"")));
    assert_eq!(
        post_form(&f, &resume, Some(&cookie), &[("csrf", &csrf)]),
        303
    );
    assert!(!channel(&f.engine, "alpha").paused);

    // After logging out the session opens nothing.
    assert_eq!(
        post_form(&f, "/dashboard/logout", Some(&cookie), &[("csrf", &csrf)]),
        303
    );
    assert_eq!(get(&f, &app_path(), Some(&cookie)).0, 401);
}

#[test]
fn hostile_machine_ids_come_out_escaped() {
    let f = start();
    let (cookie, _) = login(&f);
    let (_, page) = get(&f, &app_path(), Some(&cookie));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script"), "no markup from the database");
}

#[test]
fn the_discovery_page_lists_tokens_escapes_what_members_wrote_and_deletes() {
    let f = start();
    let discovery = &f.engine.discovery;
    let made = discovery.create(3).unwrap();
    let token = made.token.as_str();
    discovery
        .register(token, "a1", "m1=http://10.0.0.1:2380")
        .unwrap();
    // Anyone holding the URL writes values: one that is markup.
    let hostile = "<b>m2</b>=http://h<script>alert(1)</script>:2380";
    discovery.register(token, "b2", hostile).unwrap();

    assert_eq!(get(&f, "/dashboard/discovery", None).0, 401);
    let (cookie, csrf) = login(&f);
    let (_, overview) = get(&f, "/dashboard/", Some(&cookie));
    assert!(overview.contains("<a href=\"/dashboard/discovery\">etcd discovery</a>"));
    let (status, page) = get(&f, "/dashboard/discovery", Some(&cookie));
    assert_eq!(status, 200);
    assert!(page.contains(&format!("<p class=\"id\">{}</p>", made.url)));
    assert!(page.contains("size 3 · 2 registered · waiting for 1 more"));
    assert!(page.contains(
        "<tr data-member=\"a1\"><td>1</td><td class=\"member\">a1</td>\
         <td class=\"peers\">m1=http://10.0.0.1:2380</td>"
    ));
    assert!(
        page.contains("&lt;b&gt;m2&lt;/b&gt;=http://h&lt;script&gt;alert(1)&lt;/script&gt;:2380")
    );
    assert!(
        !page.contains("<script") && !page.contains("<b>"),
        "no markup from a member"
    );

    // Deleting a registration: refused without the session's CSRF token, done with it.
    let member = format!("/dashboard/discovery/{token}/members/b2/delete");
    assert_eq!(
        post_form(&f, &member, Some(&cookie), &[("csrf", "0000")]),
        403
    );
    assert_eq!(discovery.token(token).unwrap().registrations.len(), 2);
    assert_eq!(
        post_form(&f, &member, Some(&cookie), &[("csrf", &csrf)]),
        303
    );
    let left: Vec<String> = discovery
        .token(token)
        .unwrap()
        .registrations
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, ["a1"]);
    // A second time there is nothing to delete: the page says so.
    assert_eq!(
        post_form(&f, &member, Some(&cookie), &[("csrf", &csrf)]),
        404
    );

    let whole = format!("/dashboard/discovery/{token}/delete");
    assert_eq!(post_form(&f, &whole, None, &[("csrf", &csrf)]), 401);
    assert_eq!(
        post_form(&f, &whole, Some(&cookie), &[("csrf", &csrf)]),
        303
    );
    assert!(discovery.tokens().is_empty());
    let (_, page) = get(&f, "/dashboard/discovery", Some(&cookie));
    assert!(page.contains("No token yet."));
}

/// Headless Chromium, driven over the DevTools protocol: it gets the session cookie of an HTTP
/// login, loads the app page, and the rendered DOM and a screenshot are checked.
#[test]
fn chromium_renders_the_dashboard() {
    let chromium = require_chromium();
    let f = start();
    let (cookie, _) = login(&f);
    let session = cookie.split_once('=').unwrap().1.to_owned();

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::launch(&chromium, profile.path());
    let mut cdp = browser.connect_page();
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": false}),
    );
    let set = cdp.call(
        "Network.setCookie",
        json!({
            "name": "kiln_dashboard", "value": session,
            "url": f.url("/dashboard/"), "path": "/dashboard", "httpOnly": true, "sameSite": "Strict",
        }),
    );
    assert_eq!(set["success"], true, "{set}");
    cdp.call("Page.enable", json!({}));
    cdp.call("Page.navigate", json!({"url": f.url(&app_path())}));
    cdp.wait_event("Page.loadEventFired", Duration::from_secs(30));

    let dom = cdp.evaluate("document.documentElement.outerHTML");
    let dom = dom.as_str().expect("the DOM as a string");
    assert!(dom.contains("1.1.0"), "the rendered page shows the version");
    assert!(dom.contains("<svg class=\"chart\""), "and the chart");
    let bars = cdp.evaluate("document.querySelectorAll('svg.chart rect').length");
    assert!(
        bars.as_u64().unwrap_or(0) >= 4,
        "the chart has bars: {bars}"
    );
    let styled = cdp.evaluate("getComputedStyle(document.querySelector('header')).display");
    assert_eq!(styled, "flex", "the stylesheet loaded");

    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    let (width, height) = png_size(&png).expect("a PNG");
    assert_eq!((width, height), (1280, 1600));
    assert!(
        png.len() > 20_000,
        "a real page, not a blank one: {} bytes",
        png.len()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/ci/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!(
        "screenshot: {} ({width}x{height}, {} bytes)",
        path.canonicalize().unwrap_or(path.clone()).display(),
        png.len()
    );
    drop(cdp);
    browser.close();
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 screenshot")
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

/// Debian's `chromium`, installed when missing and running as root (like `require_tool`).
fn require_chromium() -> PathBuf {
    let found = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        })
    };
    if let Some(path) = found() {
        return path;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "chromium is missing and `apt-get install -y chromium` failed ({status:?}); install it as root"
    );
    found().expect("chromium is on PATH after installing it")
}

/// A headless Chromium of this test, killed (with its process group) when dropped.
struct Browser {
    child: Child,
    port: u16,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
                // Nothing leaves the machine.
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so its helper processes go with it.
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok());
            if let Some(port) = port.filter(|p| *p != 0) {
                break port;
            }
            if Instant::now() > deadline {
                let _ = kill_group(child.id());
                panic!("chromium wrote no {} within 30 s", port_file.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Self { child, port }
    }

    /// Attaches to the page target chromium opened.
    fn connect_page(&self) -> Cdp {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ws_url = loop {
            let targets: Value = agent()
                .get(&format!("http://127.0.0.1:{}/json/list", self.port))
                .call()
                .ok()
                .and_then(|r| r.into_json().ok())
                .unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|list| {
                list.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "chromium lists no page target");
            std::thread::sleep(Duration::from_millis(100));
        };
        Cdp::connect(&ws_url, self.port)
    }

    fn close(mut self) {
        let _ = kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Kills the process group this test started chromium in (its id is chromium's pid).
fn kill_group(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
}

/// A minimal DevTools protocol client: numbered calls, answers matched by id, events kept.
struct Cdp {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    fn connect(ws_url: &str, port: u16) -> Self {
        let stream = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        )
        .expect("connecting to chromium's DevTools port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (socket, _) =
            tungstenite::client(ws_url, stream).expect("the DevTools WebSocket handshake");
        // Short reads from here on, so every wait below can check its own deadline.
        socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Self {
            socket,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends a command and waits (30 s at most) for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(tungstenite::Message::text(message))
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let message = self.receive(deadline, method);
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method} failed: {message}");
                return message["result"].clone();
            }
            self.events.push(message);
        }
    }

    /// Waits for an event named `name` (or finds it among those already received).
    fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == name) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let message = self.receive(deadline, name);
            if message["method"] == name {
                return message;
            }
            self.events.push(message);
        }
    }

    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    fn receive(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        loop {
            assert!(
                Instant::now() < deadline,
                "chromium did not answer {waiting_for} in time"
            );
            match self.socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    return serde_json::from_str(text.as_str()).expect("DevTools sends JSON")
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from chromium while waiting for {waiting_for}: {e}"),
            }
        }
    }
}
