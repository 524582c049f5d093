use super::*;
use crate::{parse, rewrite};

const BASE: u32 = 1_000_000;
const PUBLIC: &str = "203.0.113.1:40000";

/// The server side's rewrite: every 227 gets the public endpoint.
fn rewrite_227(line: &Line) -> LineAction {
    match parse::passive_reply(line.content()) {
        Ok(announced) => LineAction::Replace(rewrite::splice(
            &line.bytes,
            announced.span,
            rewrite::host_port_text(PUBLIC.parse().unwrap()).as_bytes(),
        )),
        Err(_) => LineAction::Keep,
    }
}

fn server() -> StreamRewriter {
    StreamRewriter::new(BASE, 512)
}

fn segment(seq_offset: u32, text: &str) -> Segment {
    Segment {
        seq: BASE.wrapping_add(seq_offset),
        payload: text.as_bytes().to_vec(),
    }
}

const REPLY: &str = "227 Entering Passive Mode (10,0,0,2,195,80).\r\n";
const REWRITTEN: &str = "227 Entering Passive Mode (203,0,113,1,156,64).\r\n";

#[test]
fn untouched_traffic_keeps_its_sequence_numbers() {
    let mut stream = server();
    let out = stream
        .on_segment(BASE, b"220 hello\r\n", &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(0, "220 hello\r\n")]);
    let out = stream
        .on_segment(BASE + 11, b"331 password\r\n", &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(11, "331 password\r\n")]);
}

#[test]
fn a_longer_227_shifts_what_follows_and_acks_map_back() {
    let mut stream = server();
    let out = stream
        .on_segment(BASE, REPLY.as_bytes(), &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(0, REWRITTEN)]);
    let delta = (REWRITTEN.len() - REPLY.len()) as u32;
    let next = REPLY.len() as u32;
    let out = stream
        .on_segment(BASE + next, b"150 ok\r\n", &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(next + delta, "150 ok\r\n")]);
    // Part of the rewritten line acknowledged: not yet acknowledged for the sender.
    assert_eq!(stream.seq_map().ack_to_sender(BASE + 10), BASE);
    // The receiver acknowledges everything it got; the sender hears its own numbering.
    assert_eq!(stream.on_ack(BASE + next + delta + 8), BASE + next + 8);
    assert_eq!(
        stream.seq_map().pending_edits(),
        0,
        "acknowledged edits are folded"
    );
}

#[test]
fn a_227_split_across_segments_goes_out_whole_at_its_own_position() {
    let mut stream = server();
    stream
        .on_segment(BASE, b"200 ok\r\n", &mut rewrite_227)
        .unwrap();
    let (first, second) = REPLY.split_at(30);
    assert_eq!(
        stream
            .on_segment(BASE + 8, first.as_bytes(), &mut rewrite_227)
            .unwrap(),
        vec![]
    );
    let out = stream
        .on_segment(BASE + 8 + 30, second.as_bytes(), &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(8, REWRITTEN)]);
}

#[test]
fn an_unfinished_line_waits_for_its_end() {
    let mut stream = server();
    let out = stream
        .on_segment(BASE, b"150 Opening data", &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![], "judged only whole");
    let out = stream
        .on_segment(BASE + 16, b" connection\r\n", &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(0, "150 Opening data connection\r\n")]);
}

#[test]
fn retransmissions_get_the_same_bytes_at_the_same_place() {
    let mut stream = server();
    let first = stream
        .on_segment(BASE, REPLY.as_bytes(), &mut rewrite_227)
        .unwrap();
    let again = stream
        .on_segment(BASE, REPLY.as_bytes(), &mut rewrite_227)
        .unwrap();
    assert_eq!(first, again);
    // A retransmission that overlaps new data: the old part resent, the new part processed.
    let next = REPLY.len() as u32;
    let overlapping = format!("{}{}", &REPLY[10..], "226 done\r\n");
    let out = stream
        .on_segment(BASE + 10, overlapping.as_bytes(), &mut rewrite_227)
        .unwrap();
    let delta = (REWRITTEN.len() - REPLY.len()) as u32;
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].seq, BASE + 10);
    assert_eq!(out[0].payload, &REWRITTEN.as_bytes()[10..]);
    assert_eq!(out[1], segment(next + delta, "226 done\r\n"));
}

#[test]
fn out_of_order_segments_wait_for_the_gap() {
    let mut stream = server();
    let (first, second) = REPLY.split_at(20);
    let late = stream
        .on_segment(BASE + 20, second.as_bytes(), &mut rewrite_227)
        .unwrap();
    assert_eq!(late, vec![]);
    let out = stream
        .on_segment(BASE, first.as_bytes(), &mut rewrite_227)
        .unwrap();
    assert_eq!(out, vec![segment(0, REWRITTEN)]);
}

#[test]
fn pipelined_commands_are_rewritten_one_by_one() {
    let mut client = StreamRewriter::new(BASE, 512);
    let mut to_public = |line: &Line| {
        let Some(command) = parse::command_line(line.content()) else {
            return LineAction::Keep;
        };
        match parse::port_argument(&command) {
            Ok(announced) if command.verb == "PORT" => LineAction::Replace(rewrite::splice(
                &line.bytes,
                announced.span,
                rewrite::host_port_text(PUBLIC.parse().unwrap()).as_bytes(),
            )),
            _ => LineAction::Keep,
        }
    };
    let out = client
        .on_segment(
            BASE,
            b"PORT 10,0,0,2,4,1\r\nRETR file\r\nPORT 10,0,0,2,4,2\r\n",
            &mut to_public,
        )
        .unwrap();
    assert_eq!(
        out,
        vec![segment(
            0,
            "PORT 203,0,113,1,156,64\r\nRETR file\r\nPORT 203,0,113,1,156,64\r\n"
        )]
    );
    assert_eq!(
        client.seq_map().pending_edits(),
        2,
        "two edits in one window"
    );
}

#[test]
fn held_lines_are_bounded_and_the_rest_waits_for_retransmission() {
    let mut client = StreamRewriter::new(BASE, 512);
    let line = "NOOP\r\n";
    let mut hold = |_: &Line| LineAction::Hold;
    let mut offset = 0u32;
    while client.held_lines() * line.len() < MAX_HELD {
        client
            .on_segment(BASE + offset, line.as_bytes(), &mut hold)
            .unwrap();
        offset += line.len() as u32;
    }
    let held = client.held_lines();
    assert_eq!(client.next_seq(), BASE + offset);
    // Full: the next line is not taken (not acknowledged).
    client
        .on_segment(BASE + offset, line.as_bytes(), &mut hold)
        .unwrap();
    assert_eq!(client.held_lines(), held);
    assert_eq!(client.next_seq(), BASE + offset, "not taken");
    // Once lines go, its retransmission is.
    let (released, _) = client.release(&mut |_: &Line| LineAction::Keep).unwrap();
    assert_eq!(released.map(|s| s.payload.len()), Some(held * line.len()));
    client
        .on_segment(BASE + offset, line.as_bytes(), &mut |_: &Line| {
            LineAction::Keep
        })
        .unwrap();
    assert_eq!(client.next_seq(), BASE + offset + line.len() as u32);
}

#[test]
fn a_line_without_end_is_bounded() {
    let mut stream = StreamRewriter::new(BASE, 64);
    let long = format!("227 {}", "x".repeat(100));
    assert!(matches!(
        stream.on_segment(BASE, long.as_bytes(), &mut rewrite_227),
        Err(StreamError::LineTooLong(_))
    ));
}

#[test]
fn after_an_error_the_stream_refuses_everything() {
    let mut stream = StreamRewriter::new(BASE, 16);
    assert!(matches!(
        stream.on_segment(
            BASE,
            b"150 a line that is far too long\r\n",
            &mut rewrite_227
        ),
        Err(StreamError::LineTooLong(_))
    ));
    assert_eq!(
        stream.on_segment(BASE + 40, b"200 ok\r\n", &mut rewrite_227),
        Err(StreamError::Broken)
    );
    assert_eq!(stream.flush(), None);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const STREAM: &str = "220 hi\r\n227 Entering Passive Mode (10,0,0,2,195,80).\r\n150 ok\r\n\
                          227 =10,0,0,3,4,1\r\n226 done\r\n229 Entering (|||6446|)\r\n";

    fn expected() -> Vec<u8> {
        let mut assembler = LineAssembler::new(512);
        let mut out = Vec::new();
        for line in assembler.push(STREAM.as_bytes()).unwrap() {
            match rewrite_227(&line) {
                LineAction::Replace(bytes) => out.extend(bytes),
                LineAction::Keep | LineAction::Hold => out.extend(line.bytes),
            }
        }
        out
    }

    proptest! {
        /// However the stream is cut into segments, retransmitted and reordered, the
        /// receiver ends up with the sender's stream with exactly the intended rewrites,
        /// and never sees two different bytes at one sequence number.
        #[test]
        fn any_segmentation_yields_the_rewritten_stream(
            cuts in prop::collection::vec(1usize..24, 1..40),
            retransmit in prop::collection::vec(any::<bool>(), 40),
            swap in prop::collection::vec(any::<bool>(), 40),
        ) {
            let input = STREAM.as_bytes();
            let mut segments = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= input.len() {
                    break;
                }
                let end = (at + cut).min(input.len());
                segments.push((at, &input[at..end]));
                at = end;
            }
            // Reorder: swap some neighbours.
            for i in 0..segments.len().saturating_sub(1) {
                if swap[i % swap.len()] {
                    segments.swap(i, i + 1);
                }
            }
            let mut stream = server();
            let expected = expected();
            let mut received: Vec<Option<u8>> = vec![None; expected.len()];
            let mut deliver = |out: Vec<Segment>| -> Result<(), TestCaseError> {
                for segment in out {
                    let offset = segment.seq.wrapping_sub(BASE) as usize;
                    for (i, byte) in segment.payload.iter().enumerate() {
                        let slot = received.get_mut(offset + i).ok_or_else(|| TestCaseError::fail("beyond the stream"))?;
                        prop_assert!(slot.is_none() || *slot == Some(*byte), "two bytes at one place");
                        *slot = Some(*byte);
                    }
                }
                Ok(())
            };
            for (i, (offset, bytes)) in segments.iter().enumerate() {
                let seq = BASE.wrapping_add(*offset as u32);
                deliver(stream.on_segment(seq, bytes, &mut rewrite_227).unwrap())?;
                if retransmit[i % retransmit.len()] {
                    deliver(stream.on_segment(seq, bytes, &mut rewrite_227).unwrap())?;
                }
            }
            // Swapped segments that were dropped as ahead-of-order come again, as a
            // sender's retransmissions would.
            for (offset, bytes) in &segments {
                deliver(stream.on_segment(BASE.wrapping_add(*offset as u32), bytes, &mut rewrite_227).unwrap())?;
            }
            let got: Option<Vec<u8>> = received.into_iter().collect();
            prop_assert_eq!(got, Some(expected));
        }
    }
}
