//! Commands and replies of the FTP control connection (RFC 959, RFC 2428), read strictly.
//!
//! Only what the ALG acts on is decoded in depth: the data-connection endpoints of `PORT`,
//! `EPRT`, `227` and `229`. Each comes with the byte range of its text in the line, so a
//! rewrite touches exactly those bytes. Numbers are checked as they are read (no octet above
//! 255, no port above 65535 or of 0, exactly six fields), since a lax parser here is what
//! NAT-slipstreaming style attacks rely on.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    ops::Range,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("expected 6 comma-separated numbers, found {0}")]
    FieldCount(usize),
    #[error("field {field} is not a decimal number of 1 to 3 digits")]
    NotANumber { field: usize },
    #[error("field {field} is {value}, above 255")]
    FieldRange { field: usize, value: u32 },
    #[error("port {0} is not a valid port")]
    PortRange(u32),
    #[error("malformed extended address: {0}")]
    Extended(&'static str),
    #[error("no address in the reply")]
    Missing,
}

/// An IPv4 endpoint announced in a line, and where its text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub endpoint: SocketAddrV4,
    /// Byte range in the line (terminator excluded) of the text a rewrite replaces: the six
    /// numbers of `PORT`/`227`, the `|1|addr|port|` argument of `EPRT`, the port digits of `229`.
    pub span: Range<usize>,
}

/// What an `EPRT` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtendedAddress {
    V4 {
        announced: Announced,
        delimiter: u8,
    },
    /// IPv6 is not translated by a NAT44; reported so policy can decide.
    V6 {
        addr: Ipv6Addr,
        port: u16,
    },
}

/// A command line, split into its verb (upper-cased) and argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine<'a> {
    pub verb: String,
    pub argument: &'a [u8],
    /// Offset of `argument` in the line.
    pub argument_start: usize,
}

/// Splits `content` (a line without terminator) into verb and argument. The verb is 3 or 4
/// ASCII letters (RFC 959 section 5.3.1), followed by nothing or one space.
pub fn command_line(content: &[u8]) -> Option<CommandLine<'_>> {
    let verb_len = content
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    if !(3..=4).contains(&verb_len) {
        return None;
    }
    let verb = String::from_utf8_lossy(&content[..verb_len]).to_ascii_uppercase();
    match content.get(verb_len) {
        None => Some(CommandLine {
            verb,
            argument: &[],
            argument_start: verb_len,
        }),
        Some(b' ') => Some(CommandLine {
            verb,
            argument: &content[verb_len + 1..],
            argument_start: verb_len + 1,
        }),
        Some(_) => None,
    }
}

/// A reply line: `NNN text` (final line) or `NNN-text` (first line of a multi-line reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// `NNN-`: more lines follow until one that starts with `NNN `.
    pub continued: bool,
}

/// Reads the code of a reply line; `None` for a line that does not start with three digits and
/// a space or hyphen (the text lines inside a multi-line reply).
pub fn reply_line(content: &[u8]) -> Option<ReplyLine> {
    let [a, b, c, sep, ..] = *content else {
        // "NNN" alone is a valid final line too.
        return match *content {
            [a, b, c] if [a, b, c].iter().all(u8::is_ascii_digit) && (b'1'..=b'5').contains(&a) => {
                Some(ReplyLine {
                    code: code(a, b, c),
                    continued: false,
                })
            }
            _ => None,
        };
    };
    if !(b'1'..=b'5').contains(&a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    match sep {
        b' ' => Some(ReplyLine {
            code: code(a, b, c),
            continued: false,
        }),
        b'-' => Some(ReplyLine {
            code: code(a, b, c),
            continued: true,
        }),
        _ => None,
    }
}

fn code(a: u8, b: u8, c: u8) -> u16 {
    (a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16
}

/// Parses exactly `h1,h2,h3,h4,p1,p2` (the whole of `text`).
pub fn host_port(text: &[u8]) -> Result<SocketAddrV4, AddressError> {
    let fields: Vec<&[u8]> = text.split(|&b| b == b',').collect();
    if fields.len() != 6 {
        return Err(AddressError::FieldCount(fields.len()));
    }
    let mut numbers = [0u8; 6];
    for (index, field) in fields.iter().enumerate() {
        let field_number = index + 1;
        if field.is_empty() || field.len() > 3 || !field.iter().all(u8::is_ascii_digit) {
            return Err(AddressError::NotANumber {
                field: field_number,
            });
        }
        let value = field
            .iter()
            .fold(0u32, |acc, digit| acc * 10 + (digit - b'0') as u32);
        numbers[index] = u8::try_from(value).map_err(|_| AddressError::FieldRange {
            field: field_number,
            value,
        })?;
    }
    let port = u16::from_be_bytes([numbers[4], numbers[5]]);
    if port == 0 {
        return Err(AddressError::PortRange(0));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::new(numbers[0], numbers[1], numbers[2], numbers[3]),
        port,
    ))
}

/// The argument of `PORT`: exactly the six numbers.
pub fn port_argument(command: &CommandLine<'_>) -> Result<Announced, AddressError> {
    let endpoint = host_port(command.argument)?;
    Ok(Announced {
        endpoint,
        span: command.argument_start..command.argument_start + command.argument.len(),
    })
}

/// The endpoint of a `227` reply line (`content` without terminator). RFC 1123 4.1.2.6: the
/// format is not standardized, so the numbers are found by scanning for the first digit after
/// the code; parentheses are optional. The run of digits and commas found there must be
/// exactly the six numbers.
pub fn passive_reply(content: &[u8]) -> Result<Announced, AddressError> {
    let text_start = 4.min(content.len());
    let start = content[text_start..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|at| text_start + at)
        .ok_or(AddressError::Missing)?;
    let len = content[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b',')
        .count();
    // A trailing comma belongs to the prose, not the address ("... 1,2,3,4,5,6, ok").
    let len = if content[start + len - 1] == b',' {
        len - 1
    } else {
        len
    };
    let endpoint = host_port(&content[start..start + len])?;
    Ok(Announced {
        endpoint,
        span: start..start + len,
    })
}

/// The argument of `EPRT` (RFC 2428): `<d><af><d><addr><d><port><d>`.
pub fn eprt_argument(command: &CommandLine<'_>) -> Result<ExtendedAddress, AddressError> {
    let argument = command.argument;
    let &delimiter = argument
        .first()
        .ok_or(AddressError::Extended("empty argument"))?;
    if !(33..=126).contains(&delimiter)
        || delimiter.is_ascii_digit()
        || delimiter == b'.'
        || delimiter == b':'
    {
        return Err(AddressError::Extended("bad delimiter"));
    }
    let fields: Vec<&[u8]> = argument.split(|&b| b == delimiter).collect();
    // "", af, addr, port, "" : anything after the closing delimiter is an error.
    let [b"", af, addr, port, b""] = fields[..] else {
        return Err(AddressError::Extended("expected <d>af<d>addr<d>port<d>"));
    };
    let port = decimal_port(port)?;
    let addr =
        std::str::from_utf8(addr).map_err(|_| AddressError::Extended("address is not text"))?;
    match af {
        b"1" => {
            let ip: Ipv4Addr = strict_ipv4(addr)
                .ok_or(AddressError::Extended("not a dotted-quad IPv4 address"))?;
            Ok(ExtendedAddress::V4 {
                announced: Announced {
                    endpoint: SocketAddrV4::new(ip, port),
                    span: command.argument_start..command.argument_start + argument.len(),
                },
                delimiter,
            })
        }
        b"2" => {
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| AddressError::Extended("not an IPv6 address"))?;
            Ok(ExtendedAddress::V6 { addr: ip, port })
        }
        _ => Err(AddressError::Extended("unknown address family")),
    }
}

/// The port of a `229` reply line (RFC 2428): `(<d><d><d><port><d>)`.
pub fn extended_passive_reply(content: &[u8]) -> Result<(u16, Range<usize>), AddressError> {
    let open = content
        .iter()
        .position(|&b| b == b'(')
        .ok_or(AddressError::Missing)?;
    let rest = &content[open + 1..];
    let &delimiter = rest
        .first()
        .ok_or(AddressError::Extended("nothing after '('"))?;
    if !(33..=126).contains(&delimiter) || delimiter.is_ascii_digit() {
        return Err(AddressError::Extended("bad delimiter"));
    }
    if rest.get(..3) != Some(&[delimiter; 3][..]) {
        return Err(AddressError::Extended(
            "expected three delimiters before the port",
        ));
    }
    let digits = rest[3..].iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(3 + digits) != Some(&delimiter) || rest.get(4 + digits) != Some(&b')') {
        return Err(AddressError::Extended("expected <d>) after the port"));
    }
    let start = open + 1 + 3;
    let port = decimal_port(&content[start..start + digits])?;
    Ok((port, start..start + digits))
}

fn decimal_port(digits: &[u8]) -> Result<u16, AddressError> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(AddressError::Extended("port is not a decimal number"));
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, digit| acc * 10 + (digit - b'0') as u32);
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(AddressError::PortRange(value)),
    }
}

/// Dotted quad with no leading zeros beyond a lone `0` (std's parser is already this strict;
/// kept separate so the rule is visible here).
fn strict_ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    #[test]
    fn port_command_is_read_exactly() {
        let command = command_line(b"PORT 10,0,0,2,195,80").unwrap();
        assert_eq!(command.verb, "PORT");
        let announced = port_argument(&command).unwrap();
        assert_eq!(announced.endpoint, endpoint("10.0.0.2:50000"));
        assert_eq!(announced.span, 5..20);
        assert_eq!(command_line(b"port 1,2,3,4,0,21").unwrap().verb, "PORT");
    }

    #[test]
    fn malformed_port_arguments_are_named() {
        let parse = |line: &[u8]| port_argument(&command_line(line).unwrap());
        assert_eq!(
            parse(b"PORT 10,0,0,2,195"),
            Err(AddressError::FieldCount(5))
        );
        assert_eq!(
            parse(b"PORT 10,0,0,2,195,80,1"),
            Err(AddressError::FieldCount(7))
        );
        assert_eq!(
            parse(b"PORT 10,0,0,256,195,80"),
            Err(AddressError::FieldRange {
                field: 4,
                value: 256
            })
        );
        assert_eq!(
            parse(b"PORT 10,0,0,2,195,999"),
            Err(AddressError::FieldRange {
                field: 6,
                value: 999
            })
        );
        assert_eq!(parse(b"PORT 10,0,0,2,0,0"), Err(AddressError::PortRange(0)));
        assert_eq!(
            parse(b"PORT 10,0,0,2, 195,80"),
            Err(AddressError::NotANumber { field: 5 })
        );
        assert_eq!(
            parse(b"PORT 10,0,0,2,0195,80"),
            Err(AddressError::NotANumber { field: 5 })
        );
        assert_eq!(
            parse(b"PORT 10,0,0,2,-1,80"),
            Err(AddressError::NotANumber { field: 5 })
        );
    }

    #[test]
    fn passive_reply_with_and_without_parentheses() {
        let cases: [(&[u8], &str, Range<usize>); 4] = [
            (
                b"227 Entering Passive Mode (10,0,0,2,195,80).",
                "10.0.0.2:50000",
                27..42,
            ),
            (
                b"227 Entering Passive Mode 10,0,0,2,195,80",
                "10.0.0.2:50000",
                26..41,
            ),
            (b"227 =10,0,0,2,4,1", "10.0.0.2:1025", 5..17),
            (b"227 ok 10,0,0,2,4,1, enjoy", "10.0.0.2:1025", 7..19),
        ];
        for (line, expected, span) in cases {
            let announced = passive_reply(line).unwrap();
            assert_eq!(
                announced.endpoint,
                endpoint(expected),
                "{}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(announced.span, span);
        }
        assert_eq!(
            passive_reply(b"227 Entering Passive Mode"),
            Err(AddressError::Missing)
        );
        assert_eq!(
            passive_reply(b"227 Passive (10,0,0,2,195,80,7)"),
            Err(AddressError::FieldCount(7))
        );
        assert_eq!(
            passive_reply(b"227 Passive (10,0,0,2,195,300)"),
            Err(AddressError::FieldRange {
                field: 6,
                value: 300
            })
        );
    }

    #[test]
    fn eprt_reads_both_families_and_refuses_the_rest() {
        let v4 = eprt_argument(&command_line(b"EPRT |1|10.0.0.2|50000|").unwrap()).unwrap();
        assert_eq!(
            v4,
            ExtendedAddress::V4 {
                announced: Announced {
                    endpoint: endpoint("10.0.0.2:50000"),
                    span: 5..23
                },
                delimiter: b'|'
            }
        );
        let other = eprt_argument(&command_line(b"EPRT !1!10.0.0.2!21!").unwrap()).unwrap();
        assert!(matches!(
            other,
            ExtendedAddress::V4 {
                delimiter: b'!',
                ..
            }
        ));
        let v6 = eprt_argument(&command_line(b"EPRT |2|2001:db8::1|5282|").unwrap()).unwrap();
        assert_eq!(
            v6,
            ExtendedAddress::V6 {
                addr: "2001:db8::1".parse().unwrap(),
                port: 5282
            }
        );
        for bad in [
            &b"EPRT |1|10.0.0.2|50000"[..],
            b"EPRT |1|10.0.0.2|50000|x",
            b"EPRT |3|10.0.0.2|50000|",
            b"EPRT |1|10.0.0.256|50000|",
            b"EPRT |1|10.0.0.2|65536|",
            b"EPRT |1|10.0.0.2|0|",
            b"EPRT |1|010.0.0.2|21|",
            b"EPRT 1110.0.0.21211",
            b"EPRT ",
        ] {
            let parsed = command_line(bad).map(|command| eprt_argument(&command));
            assert!(
                !matches!(parsed, Some(Ok(_))),
                "accepted {}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn extended_passive_reply_port_and_span() {
        let (port, span) =
            extended_passive_reply(b"229 Entering Extended Passive Mode (|||6446|)").unwrap();
        assert_eq!((port, span), (6446, 39..43));
        assert!(extended_passive_reply(b"229 Entering Extended Passive Mode (||6446|)").is_err());
        assert!(extended_passive_reply(b"229 (|||70000|)").is_err());
        assert!(extended_passive_reply(b"229 (|||6446|").is_err());
        assert_eq!(
            extended_passive_reply(b"229 no port"),
            Err(AddressError::Missing)
        );
    }

    #[test]
    fn command_and_reply_lines() {
        assert_eq!(command_line(b"QUIT").unwrap().argument, b"");
        assert!(command_line(b"QU").is_none());
        assert!(command_line(b"RETRIEVE x").is_none());
        assert!(command_line(b"RETR\tx").is_none());
        assert_eq!(
            reply_line(b"227 Entering"),
            Some(ReplyLine {
                code: 227,
                continued: false
            })
        );
        assert_eq!(
            reply_line(b"230-Welcome"),
            Some(ReplyLine {
                code: 230,
                continued: true
            })
        );
        assert_eq!(
            reply_line(b"200"),
            Some(ReplyLine {
                code: 200,
                continued: false
            })
        );
        assert_eq!(reply_line(b" 227 indented text line"), None);
        assert_eq!(reply_line(b"627 bad class"), None);
        assert_eq!(reply_line(b"2270 no separator"), None);
    }
}
