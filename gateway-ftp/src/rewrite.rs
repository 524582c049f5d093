//! Producing a translated line: the announced endpoint's text replaced, every other byte kept.

use std::{net::SocketAddrV4, ops::Range};

/// `h1,h2,h3,h4,p1,p2` for `PORT` and `227`.
pub fn host_port_text(endpoint: SocketAddrV4) -> String {
    let [a, b, c, d] = endpoint.ip().octets();
    let [p1, p2] = endpoint.port().to_be_bytes();
    format!("{a},{b},{c},{d},{p1},{p2}")
}

/// `<d>1<d>addr<d>port<d>` for `EPRT`.
pub fn eprt_text(endpoint: SocketAddrV4, delimiter: u8) -> String {
    let d = delimiter as char;
    format!("{d}1{d}{}{d}{}{d}", endpoint.ip(), endpoint.port())
}

/// `line` (terminator included) with `span` replaced by `replacement`.
pub fn splice(line: &[u8], span: Range<usize>, replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() - span.len() + replacement.len());
    out.extend_from_slice(&line[..span.start]);
    out.extend_from_slice(replacement);
    out.extend_from_slice(&line[span.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn a_227_rewrite_changes_only_the_numbers() {
        let line = b"227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
        let announced = parse::passive_reply(&line[..line.len() - 2]).unwrap();
        let public: SocketAddrV4 = "203.0.113.1:40000".parse().unwrap();
        let out = splice(line, announced.span, host_port_text(public).as_bytes());
        assert_eq!(out, b"227 Entering Passive Mode (203,0,113,1,156,64).\r\n");
        // And reads back as what was written.
        assert_eq!(
            parse::passive_reply(&out[..out.len() - 2])
                .unwrap()
                .endpoint,
            public
        );
    }

    #[test]
    fn eprt_and_port_rewrites_read_back() {
        let public: SocketAddrV4 = "203.0.113.1:1024".parse().unwrap();
        let line = b"EPRT |1|10.0.0.2|50000|\r\n";
        let command = parse::command_line(&line[..line.len() - 2]).unwrap();
        let parse::ExtendedAddress::V4 {
            announced,
            delimiter,
        } = parse::eprt_argument(&command).unwrap()
        else {
            panic!("not v4")
        };
        let out = splice(
            line,
            announced.span,
            eprt_text(public, delimiter).as_bytes(),
        );
        assert_eq!(out, b"EPRT |1|203.0.113.1|1024|\r\n");
        let out = splice(
            b"PORT 10,0,0,2,195,80\r\n",
            5..20,
            host_port_text(public).as_bytes(),
        );
        assert_eq!(out, b"PORT 203,0,113,1,4,0\r\n");
    }
}
