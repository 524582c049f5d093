//! Every parser and the rewriter on arbitrary bytes: nothing may panic, and whatever parses
//! must rewrite to a line that parses back to the endpoint written into it.
#![no_main]

use std::net::SocketAddrV4;

use gateway_ftp::{line::LineAssembler, parse, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = LineAssembler::new(512);
    let Ok(lines) = lines.push(data) else { return };
    let public: SocketAddrV4 = "203.0.113.1:40000".parse().expect("constant");
    for line in lines {
        let content = line.content();
        let _ = line.has_nul_or_bare_cr();
        let _ = parse::reply_line(content);
        if let Ok(announced) = parse::passive_reply(content) {
            let out = rewrite::splice(&line.bytes, announced.span, rewrite::host_port_text(public).as_bytes());
            let back = parse::passive_reply(&out[..out.len() - (line.bytes.len() - content.len())]);
            assert_eq!(back.map(|a| a.endpoint), Ok(public));
        }
        let _ = parse::extended_passive_reply(content);
        if let Some(command) = parse::command_line(content) {
            let _ = parse::port_argument(&command);
            let _ = parse::eprt_argument(&command);
        }
    }
});
