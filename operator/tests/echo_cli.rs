//! `rudder echo` as a process: binds a free port, prints where, answers raw HTTP/1.1.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// Kills the server when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn echo_serves_on_the_printed_address() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_rudder"))
            .args(["echo", "--port", "0", "--instance", "cli-test", "--version", "v7"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening: http://").unwrap_or_else(|| panic!("{line:?}")).to_owned();

    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(stream, "GET /get?x=1 HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(lower.contains("x-echo-instance: cli-test"), "{response}");
    assert!(lower.contains("x-echo-version: v7"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["host"], "echo.test");
    assert_eq!(json["path"], "/get");
    assert_eq!(json["protocol"], "HTTP/1.1");
}
