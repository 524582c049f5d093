//! Line framing of one direction of a control connection.
//!
//! TCP delivers a byte stream in arbitrary pieces: one segment may hold half a line, or
//! several lines (pipelined commands, multi-line replies). The assembler keeps the unfinished
//! tail and hands out each complete line with the stream offset where it starts, so rewrites
//! can be placed in sequence space. It is bounded: a line longer than `max_line` is reported,
//! never buffered without limit.

/// How a line ended. RFC 959 requires CRLF; a bare LF is accepted by most servers and is
/// reported so policy can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ending {
    CrLf,
    Lf,
}

/// A complete line, terminator included.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    /// Offset of the line's first byte in the direction's stream (0 = first payload byte).
    pub start: u64,
    pub bytes: Vec<u8>,
    pub ending: Ending,
}

impl Line {
    /// The line without its terminator.
    pub fn content(&self) -> &[u8] {
        let cut = match self.ending {
            Ending::CrLf => 2,
            Ending::Lf => 1,
        };
        &self.bytes[..self.bytes.len() - cut]
    }

    /// Offset just past the line's last byte.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// A NUL anywhere, or a CR not followed by LF, in the content. FTP (Telnet NVT) forbids
    /// both inside a line, and both have been used to smuggle commands past ALGs.
    pub fn has_nul_or_bare_cr(&self) -> bool {
        let content = self.content();
        content.contains(&0) || content.contains(&b'\r')
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line at stream offset {start} exceeds {max_line} bytes without a line end")]
pub struct LineTooLong {
    pub start: u64,
    pub max_line: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LineAssembler {
    partial: Vec<u8>,
    /// Stream offset of `partial[0]` (or of the next byte when `partial` is empty).
    partial_start: u64,
    max_line: usize,
}

impl LineAssembler {
    /// `max_line` counts the terminator.
    pub fn new(max_line: usize) -> LineAssembler {
        LineAssembler {
            partial: Vec::new(),
            partial_start: 0,
            max_line,
        }
    }

    /// Offset of the next byte [`push`](Self::push) expects.
    pub fn next_offset(&self) -> u64 {
        self.partial_start + self.partial.len() as u64
    }

    /// Bytes of an unfinished line held back.
    pub fn pending(&self) -> &[u8] {
        &self.partial
    }

    /// Feeds the next in-order bytes of the stream; returns the lines they complete. On
    /// error the assembler keeps nothing of the offending line and the caller decides what to
    /// do with the connection.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Line>, LineTooLong> {
        let mut lines = Vec::new();
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(newline + 1);
            if self.partial.len() + head.len() > self.max_line {
                return Err(self.overflow());
            }
            self.partial.extend_from_slice(head);
            let line_bytes = std::mem::take(&mut self.partial);
            let ending = if line_bytes.len() >= 2 && line_bytes[line_bytes.len() - 2] == b'\r' {
                Ending::CrLf
            } else {
                Ending::Lf
            };
            let start = self.partial_start;
            self.partial_start += line_bytes.len() as u64;
            lines.push(Line {
                start,
                bytes: line_bytes,
                ending,
            });
            bytes = rest;
        }
        if self.partial.len() + bytes.len() >= self.max_line {
            return Err(self.overflow());
        }
        self.partial.extend_from_slice(bytes);
        Ok(lines)
    }

    fn overflow(&mut self) -> LineTooLong {
        let error = LineTooLong {
            start: self.partial_start,
            max_line: self.max_line,
        };
        self.partial.clear();
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_split_across_pushes_comes_out_once_whole() {
        let mut assembler = LineAssembler::new(512);
        assert_eq!(assembler.push(b"USER anon").unwrap(), vec![]);
        assert_eq!(assembler.pending(), b"USER anon");
        let lines = assembler.push(b"ymous\r\nPASS x").unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].bytes, b"USER anonymous\r\n");
        assert_eq!(lines[0].content(), b"USER anonymous");
        assert_eq!((lines[0].start, lines[0].end()), (0, 16));
        assert_eq!(assembler.next_offset(), 22);
    }

    #[test]
    fn several_lines_in_one_push_keep_their_offsets() {
        let mut assembler = LineAssembler::new(512);
        let lines = assembler
            .push(b"227-Entering\r\n227 Passive (1,2,3,4,5,6)\nNOOP\r\n")
            .unwrap();
        let starts: Vec<u64> = lines.iter().map(|l| l.start).collect();
        assert_eq!(starts, vec![0, 14, 40]);
        assert_eq!(lines[1].ending, Ending::Lf);
        assert_eq!(lines[2].ending, Ending::CrLf);
    }

    #[test]
    fn too_long_a_line_is_refused_with_or_without_its_end() {
        let mut assembler = LineAssembler::new(8);
        assert_eq!(assembler.push(b"1234567").unwrap(), vec![]);
        assert_eq!(
            assembler.push(b"8"),
            Err(LineTooLong {
                start: 0,
                max_line: 8
            })
        );
        let mut assembler = LineAssembler::new(8);
        assert!(
            assembler.push(b"123456\r\n").is_ok(),
            "8 bytes with CRLF fit"
        );
        assert_eq!(
            assembler.push(b"1234567\r\n"),
            Err(LineTooLong {
                start: 8,
                max_line: 8
            })
        );
    }

    #[test]
    fn nul_and_bare_cr_are_flagged() {
        let mut assembler = LineAssembler::new(64);
        let lines = assembler
            .push(b"RETR a\0b\r\nRETR a\rb\r\nRETR ab\r\n")
            .unwrap();
        let flags: Vec<bool> = lines.iter().map(Line::has_nul_or_bare_cr).collect();
        assert_eq!(flags, vec![true, true, false]);
    }
}
