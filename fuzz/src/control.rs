//! The control table as the agent drives it: [`ControlTable::on_packet`] on punted segments,
//! the timers, reloads, data connections that use their expectations, and a restart that
//! restores the saved table; over the maps held in memory ([`MemoryMaps`]).

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use gateway_common::PuntReason;
use gateway_ftp::session::flags;
use gateway_user::alg::{
    control::{
        AlgSettings, ChangeLog, ControlTable, HeldTable, MasqueradeSettings, MemoryMaps, Outgoing,
        SavedTable,
    },
    packet::TcpPacket,
};

use crate::ftp::policy;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const SECOND: u64 = 1_000_000_000;
/// Few ports, so that claims collide and run out.
const PORTS: std::ops::RangeInclusive<u16> = 40000..=40015;

/// Lines the peers of an FTP session send, with the addresses of this lab in them; a segment
/// takes one of them or bytes of the input.
const LINES: &[&[u8]] = &[
    b"220 ready\r\n",
    b"USER anonymous\r\n",
    b"USER bob\r\n",
    b"331 password please\r\n",
    b"PASS secret\r\n",
    b"230 logged in\r\n",
    b"230-welcome\r\n",
    b"PASV\r\n",
    b"227 Entering Passive Mode (10,0,0,2,195,80)\r\n",
    b"227 Entering Passive Mode (198,51,100,7,195,81)\r\n",
    b"EPSV\r\n",
    b"229 Entering Extended Passive Mode (|||50000|)\r\n",
    b"PORT 10,0,0,3,156,64\r\n",
    b"PORT 203,0,113,2,156,65\r\n",
    b"EPRT |1|10.0.0.3|40001|\r\n",
    b"200 PORT command successful\r\n",
    b"RETR file\r\n",
    b"150 here it comes\r\n",
    b"226 done\r\n",
    b"AUTH TLS\r\n",
    b"234 go ahead\r\n",
    b"SITE CHMOD 777 x\r\n",
    b"QUIT\r\n",
    b"221 bye\r\n",
    b"530 not logged in\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
];

/// A published server (its own policy when `choice` says so) and a masquerade, with a policy.
fn settings(choice: u8) -> AlgSettings {
    let published = SocketAddrV4::new(PUBLIC, 21);
    AlgSettings {
        published: HashMap::from([(published, SocketAddrV4::new(SERVER, 21))]),
        reserved: HashSet::from([published, SocketAddrV4::new(PUBLIC, 40015)]),
        masquerade: Some(MasqueradeSettings {
            networks: vec!["10.0.0.0/24".parse().expect("constant")],
            addresses: vec![PUBLIC],
            ports: PORTS,
        }),
        data_ports: PORTS,
        expectation_timeout_ns: 60 * SECOND,
        policy: Arc::new(policy(choice)),
        published_policies: if choice & 0x80 != 0 {
            HashMap::from([(published, Arc::new(policy(!choice)))])
        } else {
            HashMap::new()
        },
        established_timeout_ns: 7440 * SECOND,
        transitory_timeout_ns: 240 * SECOND,
        forward_pure_acks: true,
    }
}

/// One control connection of the lab, as its two ends see it, and what the harness sent and
/// was sent on it.
struct Slot {
    client: SocketAddrV4,
    /// Where the client sends: the published endpoint, or the outside server.
    to: SocketAddrV4,
    server: SocketAddrV4,
    /// Whether the client is behind the gateway (masqueraded: the server sees its mapping).
    inside: bool,
    from_client: PuntReason,
    from_server: PuntReason,
    /// Per side (client, server): initial sequence number, bytes sent after the SYN, and the
    /// sequence number up to which the gateway delivered to that side (what it acknowledges).
    isn: [u32; 2],
    sent: [u32; 2],
    delivered: [u32; 2],
}

impl Slot {
    fn new(index: usize) -> Slot {
        let port = 40000 + index as u16;
        let (client, to, server, inside, from_client, from_server) = match index {
            0 | 1 => (
                SocketAddrV4::new(CLIENT, port),
                SocketAddrV4::new(PUBLIC, 21),
                SocketAddrV4::new(SERVER, 21),
                false,
                PuntReason::PublishedFromClient,
                PuntReason::PublishedFromServer,
            ),
            2 => (
                SocketAddrV4::new(INSIDE, port),
                SocketAddrV4::new(OUTSIDE, 21),
                SocketAddrV4::new(OUTSIDE, 21),
                true,
                PuntReason::MasqueradeFromClient,
                PuntReason::MasqueradeFromServer,
            ),
            _ => (
                SocketAddrV4::new(INSIDE, port),
                SocketAddrV4::new(PUBLIC, 21),
                SocketAddrV4::new(SERVER, 21),
                true,
                PuntReason::HairpinFromClient,
                PuntReason::PublishedFromServer,
            ),
        };
        Slot {
            client,
            to,
            server,
            inside,
            from_client,
            from_server,
            isn: [1000, u32::MAX - 40],
            sent: [0; 2],
            delivered: [0; 2],
        }
    }

    /// Where the server sees the client: its mapping when it is behind the gateway.
    fn client_seen(&self, maps: &MemoryMaps) -> SocketAddrV4 {
        if !self.inside {
            return self.client;
        }
        let private =
            gateway_common::Endpoint::from_socket(self.client, gateway_common::IPPROTO_TCP);
        maps.by_private
            .get(&private)
            .map_or(SocketAddrV4::new(PUBLIC, self.client.port()), |public| {
                public.socket()
            })
    }
}

/// Reads the input a byte (or two) at a time; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn word(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

struct Lab {
    /// The byte the settings in force were made from.
    choice: u8,
    table: ControlTable,
    maps: MemoryMaps,
    slots: Vec<Slot>,
    now_ns: u64,
    /// The table as the state store has it: a snapshot with every journal record since
    /// applied, each through JSON as on disk.
    saved: Option<SavedTable>,
    /// The table as an HA standby holds it: a snapshot, then the sync's own log of the
    /// changes, each through JSON as on the wire.
    held: HeldTable,
}

/// A standby's copy of `table`: its sync snapshot, through JSON.
fn hold(table: &mut ControlTable) -> HeldTable {
    let mut held = HeldTable::default();
    for part in table.sync_snapshot(3) {
        held.apply(round_trip(&part), 0);
    }
    held
}

/// The first byte picks the policy; then each record is one event, picked by its first byte:
/// a segment of one of four control connections (published server from outside twice, a
/// masqueraded client, a hairpinned one) from either side, with any flags, options, sequence
/// jitter, an FTP line or bytes as payload, maybe a bad checksum or an expiring TTL; the
/// resend timer; time passing (expiry); a reload with another policy; a data connection using
/// an expectation; a restart (the table restored from its snapshot and journal); a flush.
/// The timers end a batch: the journal gets what changed since the last one.
///
/// Nothing may panic; everything sent must be a well-formed packet to an end of a control
/// connection; the table restored from what the store saved holds the same connections as
/// the live one.
pub fn control_table(data: &[u8]) {
    let mut input = Input(data);
    let choice = input.byte();
    let mut table = ControlTable::new(settings(choice), 7);
    table.track_changes(ChangeLog::Store);
    let saved = Some(round_trip(&table.save(0)));
    let held = hold(&mut table);
    let mut lab = Lab {
        choice,
        table,
        maps: MemoryMaps::default(),
        slots: (0..4).map(Slot::new).collect(),
        now_ns: SECOND,
        saved,
        held,
    };
    while !input.0.is_empty() {
        let op = input.byte();
        let out = match op >> 5 {
            0..=4 => lab.segment(op, &mut input),
            5 => {
                // The end of a batch: the agent saves what it changed (changes add up
                // until then), and runs its timers.
                lab.journal();
                lab.table.forget_used(&mut lab.maps);
                lab.table.resend_owed()
            }
            6 => {
                lab.now_ns += u64::from(input.byte()) * SECOND;
                lab.table.expire(lab.now_ns, &mut lab.maps);
                Vec::new()
            }
            _ => {
                match op & 0x03 {
                    0 => {
                        lab.choice ^= input.byte();
                        lab.table.set_settings(settings(lab.choice));
                    }
                    1 => lab.data_connection(input.byte()),
                    2 => lab.restart(),
                    _ => {
                        lab.table.flush(&mut lab.maps);
                    }
                }
                Vec::new()
            }
        };
        lab.check(&out);
        lab.maps.log.clear();
    }
    lab.restart();
}

impl Lab {
    /// A segment from one side of one connection, built from the record.
    fn segment(&mut self, op: u8, input: &mut Input) -> Vec<Outgoing> {
        let from_server = op & 0x04 != 0;
        let side = usize::from(from_server);
        let flags = input.byte();
        let shape = input.byte();
        let jitter = if shape & 0x01 != 0 {
            input.word() as i16
        } else {
            0
        };
        let mut options = Vec::new();
        if shape & 0x02 != 0 {
            let mss = 64 + 8 * u16::from(input.byte());
            options.extend_from_slice(&[2, 4]);
            options.extend_from_slice(&mss.to_be_bytes());
        }
        if shape & 0x04 != 0 {
            options.extend_from_slice(&[1, 3, 3, input.byte() & 0x0f]);
        }
        if shape & 0x08 != 0 {
            options.extend_from_slice(&[1, 1, 8, 10]);
            options.extend_from_slice(&u32::from(input.word()).to_be_bytes());
            options.extend_from_slice(&u32::from(input.word()).to_be_bytes());
        }
        let payload = if shape & 0x80 != 0 {
            LINES[usize::from(input.byte()) % LINES.len()].to_vec()
        } else {
            let len = usize::from(input.byte());
            input.bytes(len).to_vec()
        };
        let slot = &self.slots[usize::from(op & 0x03)];
        let ack = slot.delivered[side];
        if shape & 0x10 != 0 {
            // One SACK block around what it acknowledged.
            options.extend_from_slice(&[1, 1, 5, 10]);
            options.extend_from_slice(&ack.wrapping_sub(20).to_be_bytes());
            options.extend_from_slice(&ack.wrapping_add(u32::from(input.byte())).to_be_bytes());
        }
        let client_seen = slot.client_seen(&self.maps);
        let (src, dst, reason) = if from_server {
            (slot.server, client_seen, slot.from_server)
        } else {
            (slot.client, slot.to, slot.from_client)
        };
        let syn = flags & flags::SYN != 0;
        let seq = if syn {
            slot.isn[side]
        } else {
            slot.isn[side].wrapping_add(1).wrapping_add(slot.sent[side])
        }
        .wrapping_add(jitter as u32);
        let packet = TcpPacket {
            src: *src.ip(),
            dst: *dst.ip(),
            tos: 0,
            id: 1,
            ttl: if shape & 0x40 != 0 { 1 } else { 64 },
            dont_fragment: true,
            src_port: src.port(),
            dst_port: dst.port(),
            seq,
            ack,
            flags,
            window: 64240,
            urgent: 0,
            options,
            payload,
        };
        let mut bytes = packet.build();
        if shape & 0x20 != 0 {
            // Damaged on the way: a checksum no longer holds (or a header no longer parses).
            let at = usize::from(input.byte()) % bytes.len();
            bytes[at] ^= 0x5a;
        }
        let slot = &mut self.slots[usize::from(op & 0x03)];
        if jitter == 0 && !syn {
            let fin = u32::from(flags & flags::FIN != 0);
            slot.sent[side] = slot.sent[side]
                .wrapping_add(packet.payload.len() as u32)
                .wrapping_add(fin);
        }
        self.table
            .on_packet(reason as u8, &bytes, self.now_ns, &mut self.maps)
    }

    /// A data connection opens: the fast path uses (removes) one of the expectations.
    fn data_connection(&mut self, which: u8) {
        let mut keys: Vec<_> = self.maps.expectations.keys().copied().collect();
        if keys.is_empty() {
            return;
        }
        keys.sort_by_key(|key| (key.endpoint.socket(), key.peer));
        let key = keys[usize::from(which) % keys.len()];
        self.maps.expectations.remove(&key);
    }

    /// Everything sent is a well-formed packet to an end of a control connection; what it
    /// delivers is what that end acknowledges next.
    fn check(&mut self, out: &[Outgoing]) {
        for out in out {
            let packet =
                TcpPacket::parse(&out.bytes).expect("the gateway sends well-formed packets");
            assert_eq!(packet.dst, out.dst);
            assert!(
                [CLIENT, SERVER, INSIDE, OUTSIDE].contains(&out.dst),
                "sent to {}",
                out.dst
            );
            let to = SocketAddrV4::new(packet.dst, packet.dst_port);
            let from = SocketAddrV4::new(packet.src, packet.src_port);
            let end = packet
                .seq
                .wrapping_add(packet.payload.len() as u32)
                .wrapping_add(u32::from(packet.flags & (flags::SYN | flags::FIN) != 0));
            for slot in &mut self.slots {
                let side = if to == slot.client {
                    0
                } else if to == slot.server && from == slot.client_seen(&self.maps) {
                    1
                } else {
                    continue;
                };
                if packet.flags & flags::SYN != 0
                    || end.wrapping_sub(slot.delivered[side]) as i32 > 0
                {
                    slot.delivered[side] = end;
                }
            }
        }
    }

    /// Appends what changed to the saved table, as the store's journal does after a batch,
    /// and hands the sync's own log of it to the standby, as the HA sync does.
    fn journal(&mut self) {
        if let (Some(saved), Some(changes)) = (
            self.saved.as_mut(),
            self.table.take_changes(ChangeLog::Store, 0),
        ) {
            saved.apply(round_trip(&changes));
        }
        if let Some(changes) = self.table.take_changes(ChangeLog::Sync, 0) {
            for part in changes.split(2) {
                self.held.apply(round_trip(&part), 0);
            }
        }
    }

    /// The agent restarts: the table comes back from the snapshot and journal, under the
    /// settings in force, holding the connections the live one holds.
    ///
    /// The resend timer runs first on both: a session that finds it owes nothing clears its
    /// flag without a save (saving would cost a journal line per session per tick), so the
    /// saved flag may still say it owes; the restored session finds the same on its first
    /// tick. What either resends must be the same.
    fn restart(&mut self) {
        let resent = self.table.resend_owed();
        self.check(&resent);
        self.journal();
        let live = connections(&mut self.table);
        let saved = self.saved.take().expect("saved");
        let mut restored = ControlTable::restore(settings(self.choice), saved).expect("own format");
        let mut again = restored.resend_owed();
        let mut resent = resent;
        resent.sort_by(|a, b| a.bytes.cmp(&b.bytes));
        again.sort_by(|a, b| a.bytes.cmp(&b.bytes));
        assert_eq!(
            again, resent,
            "the restored table resends what the live one does"
        );
        assert_eq!(
            connections(&mut restored),
            live,
            "the saved table is the live one"
        );
        // A standby promoted now (the HA sync's log of the same changes) holds the same
        // connections, and resends the same (the owed flag lags there as in the save).
        let mut standby = ControlTable::new(settings(self.choice), 9);
        standby
            .take_over(std::mem::take(&mut self.held))
            .expect("the standby got a snapshot");
        let mut again = standby.resend_owed();
        again.sort_by(|a, b| a.bytes.cmp(&b.bytes));
        assert_eq!(again, resent, "the standby resends what the live one does");
        assert_eq!(
            connections(&mut standby),
            live,
            "the standby's table is the live one"
        );
        restored.track_changes(ChangeLog::Store);
        self.saved = Some(round_trip(&restored.save(0)));
        self.held = hold(&mut restored);
        self.table = restored;
    }
}

/// The table's connections as a save writes them, in id order. (The table-wide counters and
/// the port chooser's state are saved with the next change: they may lag.)
fn connections(table: &mut ControlTable) -> serde_json::Value {
    let mut value = serde_json::to_value(table.save(0)).expect("serializes");
    let mut connections = value["connections"].take();
    if let Some(list) = connections.as_array_mut() {
        list.sort_by_key(|connection| connection["id"].as_u64());
    }
    connections
}

/// Through JSON and back, as the store writes and reads it.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let bytes = serde_json::to_vec(value).expect("serializes");
    serde_json::from_slice(&bytes).expect("reads back")
}
