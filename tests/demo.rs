//! `upgate demo` in a real browser: headless Chromium loads the page, which drives every flow itself.

use std::io::BufRead;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Starts `upgate demo` on a free port in `dir`; returns the process and the page's URL.
fn start_demo(dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_upgate"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo prints its URL");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL")
        .to_string();
    (child, url)
}

fn chromium(profile: &std::path::Path, extra: &[&str], url: &str) -> std::process::Output {
    std::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=20000", "--timeout=60000"])
        .args(extra)
        .arg(url)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("run chromium")
}

#[test]
fn the_demo_page_works_in_a_real_browser() {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} is missing under CI: .ci/run installs it"
        );
        eprintln!(
            "SKIPPED the_demo_page_works_in_a_real_browser: {CHROMIUM} is not installed (.ci/run installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut demo, url) = start_demo(dir.path());
    let dom = chromium(
        &dir.path().join("profile-1"),
        &["--dump-dom"],
        &format!("{url}?selftest=1"),
    );
    let page = String::from_utf8_lossy(&dom.stdout);
    let result = page
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or("");
    let shot = dir.path().join("demo.png");
    chromium(
        &dir.path().join("profile-2"),
        &[
            "--window-size=1000,1400",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        result.contains("SELFTEST OK"),
        "the page's own checks:\n{result}"
    );
    for step in [
        "register",
        "upload",
        "list",
        "signed download",
        "refused format",
        "intercepted form",
        "slot",
        "media",
        "x-accel-redirect",
    ] {
        assert!(
            result.contains(&format!("PASS {step}")),
            "{step}:\n{result}"
        );
    }
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a rendered page, not a blank one ({} bytes)",
        png.len()
    );
    assert!(
        dir.path().join("upgate-demo/secret").exists(),
        "data lives in ./upgate-demo"
    );
}
