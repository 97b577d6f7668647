//! Teltonika's published worked examples decoded field by field, encoded back to their
//! exact bytes, and every refusal named.
//!
//! The hex strings are copied from Teltonika's "Codec" page (now "Teltonika Data
//! Sending Protocols"), https://wiki.teltonika-gps.com/view/Codec, except where a test
//! says otherwise; each one's CRC is checked by decoding it.

use super::hex;
use crate::teltonika::*;

/// Codec 8, first example: one record, IO elements of every fixed width.
const CODEC8_EX1: &str = "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F01F10000601A014E0000000000000000010000C7CF";
/// Codec 8, second example: one record, 1- and 2-byte IO elements.
const CODEC8_EX2: &str = "000000000000002808010000016B40D9AD80010000000000000000000000000000000103021503010101425E100000010000F22A";
/// Codec 8, third example: two records.
const CODEC8_EX3: &str = "000000000000004308020000016B40D57B480100000000000000000000000000000001010101000000000000016B40D5C198010000000000000000000000000000000101010101000000020000252C";
/// Codec 8 Extended example: one record, 2-byte ids and counts, an empty NX group.
const CODEC8E_EX: &str = "000000000000004A8E010000016B412CEE000100000000000000000000000000000000010005000100010100010011001D00010010015E2C880002000B000000003544C87A000E000000001DD7E06A00000100002994";
/// Codec 16 example: two records with generation type 5 (on change).
const CODEC16_EX: &str = "000000000000005F10020000016BDBC7833000000000000000000000000000000000000B05040200010000030002000B00270042563A00000000016BDBC7871800000000000000000000000000000000000B05040200010000030002000B00260042563A00000200005FB3";
/// Codec 12 `getinfo` command, from https://wiki.teltonika-gps.com/view/Sending_Codec12_commands_using_Hercules
/// (also on the Codec page).
const CODEC12_GETINFO: &str = "000000000000000F0C010500000007676574696E666F0100004312";
/// Codec 12 response to `getinfo`.
const CODEC12_RESPONSE: &str = "00000000000000900C010600000088494E493A323031392F372F323220373A3232205254433A323031392F372F323220373A3533205253543A32204552523A312053523A302042523A302043463A302046473A3020464C3A302054553A302F302055543A3020534D533A30204E4F4750533A303A3330204750533A31205341543A302052533A332052463A36352053463A31204D443A30010000C78F";
/// A Codec 8 Extended packet with one variable-length (NX) element: BLE beacon data,
/// AVL id 385, 45 bytes. Not from the Codec page: it circulates in public Teltonika
/// parsers as a beacon example; its lengths and CRC are consistent, so it serves as the
/// NX case the published examples lack.
const CODEC8E_BEACON: &str = "000000000000005A8E010000016B69B0C9510000000000000000000000000000000001810001000000000000000000010181002D11216B817F8A274D4FBDB62D33E1842F8DF8014D022BBF21A579723675064DC396A7C3520129F61900000000BF0100003E5D";

/// Decodes `hex` as one whole frame, checks it took every byte and that encoding the
/// result gives the same bytes back.
fn avl(hex_str: &str) -> AvlPacket {
    let bytes = hex(hex_str);
    let (frame, used) = FrameDecoder::new()
        .decode(&bytes)
        .expect("valid")
        .expect("whole");
    assert_eq!(used, bytes.len());
    let Frame::Avl(packet) = frame else {
        panic!("not AVL: {frame:?}")
    };
    assert_eq!(
        encode_avl(&packet).unwrap(),
        bytes,
        "re-encoded bytes differ"
    );
    packet
}

fn el(id: u16, value: IoValue) -> IoElement {
    IoElement { id, value }
}

fn no_fix() -> Gps {
    Gps::default()
}

#[test]
fn codec8_first_example_field_by_field() {
    let p = avl(CODEC8_EX1);
    assert_eq!(p.codec, Codec::Codec8);
    assert_eq!(p.records.len(), 1);
    let r = &p.records[0];
    assert_eq!(r.timestamp_ms, 0x0000_016B_40D8_EA30); // 2019-06-10T10:04:46Z
    assert_eq!(r.timestamp_ms, 1_560_161_086_000);
    assert_eq!(r.priority, 1);
    assert_eq!(r.gps, no_fix());
    assert_eq!(r.event_io, 1);
    assert_eq!(r.generation_type, None);
    assert_eq!(
        r.io,
        [
            el(0x15, IoValue::U8(3)),
            el(0x01, IoValue::U8(1)),
            el(0x42, IoValue::U16(0x5E0F)),
            el(0xF1, IoValue::U32(0x601A)),
            el(0x4E, IoValue::U64(0)),
        ]
    );
    assert_eq!(p.ack(), [0, 0, 0, 1]);
    assert_eq!(crc16(&hex(CODEC8_EX1)[8..62]), 0xC7CF);
}

#[test]
fn codec8_second_example_field_by_field() {
    let p = avl(CODEC8_EX2);
    let r = &p.records[0];
    assert_eq!(r.timestamp_ms, 0x0000_016B_40D9_AD80); // 2019-06-10T10:05:36Z
    assert_eq!((r.priority, r.event_io), (1, 1));
    assert_eq!(
        r.io,
        [
            el(0x15, IoValue::U8(3)),
            el(0x01, IoValue::U8(1)),
            el(0x42, IoValue::U16(0x5E10)),
        ]
    );
}

#[test]
fn codec8_third_example_has_two_records() {
    let p = avl(CODEC8_EX3);
    assert_eq!(p.records.len(), 2);
    assert_eq!(p.ack(), [0, 0, 0, 2]);
    let [a, b] = &p.records[..] else {
        unreachable!()
    };
    assert_eq!(a.timestamp_ms, 0x0000_016B_40D5_7B48); // 2019-06-10T10:01:01Z
    assert_eq!(b.timestamp_ms, 0x0000_016B_40D5_C198); // 2019-06-10T10:01:19Z
    for (r, ignition) in [(a, 0), (b, 1)] {
        assert_eq!((r.priority, r.event_io, r.gps), (1, 1, no_fix()));
        assert_eq!(r.io, [el(1, IoValue::U8(ignition))]);
    }
}

#[test]
fn codec8_extended_example_field_by_field() {
    let p = avl(CODEC8E_EX);
    assert_eq!(p.codec, Codec::Codec8Ext);
    let r = &p.records[0];
    assert_eq!(r.timestamp_ms, 0x0000_016B_412C_EE00); // 2019-06-10T11:36:32Z
    assert_eq!(r.timestamp_ms, 1_560_166_592_000);
    assert_eq!((r.priority, r.gps, r.event_io), (1, no_fix(), 1));
    assert_eq!(r.generation_type, None);
    assert_eq!(
        r.io,
        [
            el(0x0001, IoValue::U8(1)),
            el(0x0011, IoValue::U16(0x001D)),
            el(0x0010, IoValue::U32(0x015E_2C88)),
            el(0x000B, IoValue::U64(0x3544_C87A)),
            el(0x000E, IoValue::U64(0x1DD7_E06A)),
        ]
    );
}

#[test]
fn codec16_example_field_by_field() {
    let p = avl(CODEC16_EX);
    assert_eq!(p.codec, Codec::Codec16);
    assert_eq!(p.records.len(), 2);
    let times = [0x0000_016B_DBC7_8330, 0x0000_016B_DBC7_8718]; // 2019-07-10T12:06:54Z, :55Z
    for ((r, ts), io_11) in p.records.iter().zip(times).zip([0x27, 0x26]) {
        assert_eq!(r.timestamp_ms, ts);
        assert_eq!((r.priority, r.gps), (0, no_fix()));
        assert_eq!(r.event_io, 0x000B);
        assert_eq!(r.generation_type, Some(5));
        assert_eq!(
            r.io,
            [
                el(0x0001, IoValue::U8(0)),
                el(0x0003, IoValue::U8(0)),
                el(0x000B, IoValue::U16(io_11)),
                el(0x0042, IoValue::U16(0x563A)),
            ]
        );
    }
}

#[test]
fn codec8_extended_beacon_has_a_variable_length_element() {
    let p = avl(CODEC8E_BEACON);
    let r = &p.records[0];
    assert_eq!(r.timestamp_ms, 0x0000_016B_69B0_C951);
    assert_eq!((r.priority, r.event_io), (0, 385));
    assert_eq!(r.io.len(), 1);
    assert_eq!(r.io[0].id, 385);
    let IoValue::Bytes(beacon) = &r.io[0].value else {
        panic!("not NX: {:?}", r.io[0])
    };
    assert_eq!(beacon.len(), 45);
    assert_eq!(beacon[..3], [0x11, 0x21, 0x6B]);
    let values = telemetry_values(r);
    assert_eq!(
        values.last().unwrap().1,
        "11216b817f8a274d4fbdb62d33e1842f8df8014d022bbf21a579723675064dc396a7c3520129f61900000000bf"
    );
}

#[test]
fn codec12_getinfo_encodes_to_the_published_bytes() {
    let bytes = encode_command("getinfo").unwrap();
    assert_eq!(bytes, hex(CODEC12_GETINFO));
    assert_eq!(crc16(&bytes[8..23]), 0x4312);
    // A simulator reads it back as a command.
    let (frame, used) = FrameDecoder::new().decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(
        frame,
        Frame::Codec12(Codec12Message {
            kind: Codec12Kind::Command,
            text: b"getinfo".to_vec(),
        })
    );
}

#[test]
fn codec12_published_response_decodes_to_its_text() {
    let bytes = hex(CODEC12_RESPONSE);
    let (frame, used) = FrameDecoder::new().decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    let Frame::Codec12(msg) = frame else {
        panic!("not Codec 12: {frame:?}")
    };
    assert_eq!(msg.kind, Codec12Kind::Response);
    assert_eq!(
        msg.text_lossy(),
        "INI:2019/7/22 7:22 RTC:2019/7/22 7:53 RST:2 ERR:1 SR:0 BR:0 CF:0 FG:0 FL:0 TU:0/0 \
         UT:0 SMS:0 NOGPS:0:30 GPS:1 SAT:0 RS:3 RF:65 SF:1 MD:0"
    );
    assert_eq!(encode_response(&msg.text).unwrap(), bytes);
}

#[test]
fn codec8_first_example_as_telemetry() {
    let p = avl(CODEC8_EX1);
    let json = String::from_utf8(telemetry_json(&p.records[0])).unwrap();
    assert_eq!(
        json,
        r#"{"ts":1560161086000,"lat":0.0,"lon":0.0,"alt":0,"angle":0,"satellites":0,"speed":0,"priority":1,"event_io":1,"io_21":3,"io_1":1,"io_66":24079,"io_241":24602,"io_78":0}"#
    );
    let t = record_telemetry(&p.records[0]);
    assert_eq!(t.ts_ms, 1_560_161_086_000);
    assert_eq!(t.values.len(), 13);
    assert_eq!(t.values["io_66"].get(), "24079");
    assert_eq!(t.values["lat"].get(), "0.0");
}

#[test]
fn telemetry_signs_scales_and_repeats() {
    let record = AvlRecord {
        timestamp_ms: 1_709_294_400_000,
        priority: 2,
        gps: Gps {
            longitude: -736_000_001, // 73.6000001° W
            latitude: 406_892_490,   // 40.689249° N
            altitude: -12,
            angle: 359,
            satellites: 9,
            speed: 87,
        },
        event_io: 0,
        generation_type: None,
        io: vec![
            el(7, IoValue::U8(1)),
            el(16, IoValue::U64(u64::MAX)),
            el(7, IoValue::U8(2)),
            el(300, IoValue::Bytes(vec![0xAB, 0x00, 0x0f])),
        ],
    };
    let values = telemetry_values(&record);
    let keys: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "lat",
            "lon",
            "alt",
            "angle",
            "satellites",
            "speed",
            "priority",
            "event_io",
            "io_7",
            "io_16",
            "io_300"
        ]
    );
    let json = String::from_utf8(telemetry_json(&record)).unwrap();
    assert_eq!(
        json,
        r#"{"ts":1709294400000,"lat":40.689249,"lon":-73.6000001,"alt":-12,"angle":359,"satellites":9,"speed":87,"priority":2,"event_io":0,"io_7":2,"io_16":18446744073709551615,"io_300":"ab000f"}"#
    );
    let t = record_telemetry(&record);
    assert_eq!(t.values["lon"].get(), "-73.6000001");
    assert_eq!(t.values["io_7"].get(), "2");
}

#[test]
fn two_frames_in_one_buffer_and_a_split_one() {
    let mut stream = hex(CODEC8_EX1);
    let first = stream.len();
    stream.extend(hex(CODEC12_RESPONSE));
    stream.extend(&hex(CODEC8E_EX)[..20]);
    let d = FrameDecoder::new();
    assert_eq!(d.frame_len(&stream[..7]), Ok(None));
    assert_eq!(d.frame_len(&stream[..8]), Ok(Some(first)));
    let (_, used) = d.decode(&stream).unwrap().unwrap();
    assert_eq!(used, first);
    let (frame, used) = d.decode(&stream[first..]).unwrap().unwrap();
    assert!(matches!(frame, Frame::Codec12(_)));
    assert_eq!(d.decode(&stream[first + used..]), Ok(None));
}

/// `data` framed with the right length and CRC.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    out.extend(u32::from(crc16(data)).to_be_bytes());
    out
}

fn problem(bytes: &[u8]) -> PacketError {
    match FrameDecoder::new().decode(bytes) {
        Err(FrameError::Invalid { frame_len, problem }) => {
            assert_eq!(frame_len, bytes.len());
            problem
        }
        other => panic!("expected an invalid frame, got {other:?}"),
    }
}

#[test]
fn framing_refusals_are_named() {
    let d = FrameDecoder::new();
    assert_eq!(
        d.decode(&[0, 0, 1]),
        Err(FrameError::BadPreamble { at: 2, byte: 1 })
    );
    assert_eq!(
        d.decode(&[0, 0, 0, 0, 0, 0x10, 0, 1]),
        Err(FrameError::TooLong {
            len: 0x10_0001,
            max: MAX_DATA_LEN
        })
    );
    let small = FrameDecoder::with_max_data_len(1280);
    assert_eq!(small.max_data_len(), 1280);
    assert!(matches!(
        small.decode(&[0, 0, 0, 0, 0, 0, 5, 1]),
        Err(FrameError::TooLong { len: 1281, .. })
    ));
    assert_eq!(
        d.decode(&[0, 0, 0, 0, 0, 0, 0, 2]),
        Err(FrameError::TooShort { len: 2, min: 3 })
    );
    assert_eq!(d.decode(&[0, 0, 0, 0, 0, 0, 0, 3, 8, 0, 0]), Ok(None));
    assert_eq!(FrameError::TooShort { len: 2, min: 3 }.skip_len(), None);
    assert_eq!(
        d.frame_len(&[0, 0, 0, 0, 0, 0, 0, 2]),
        Err(FrameError::TooShort { len: 2, min: 3 })
    );
}

#[test]
fn frame_refusals_are_named_and_skippable() {
    let mut bad_crc = hex(CODEC8_EX1);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert_eq!(
        problem(&bad_crc),
        PacketError::CrcMismatch {
            expected: 0xC7CE,
            actual: 0xC7CF
        }
    );
    let err = FrameDecoder::new().decode(&bad_crc).unwrap_err();
    assert_eq!(err.skip_len(), Some(bad_crc.len()));
    assert_eq!(
        err.to_string(),
        "bad frame of 66 bytes: CRC mismatch: the frame carries 0x0000c7ce, its data gives 0xc7cf"
    );
    // The CRC's first two bytes must be zero too.
    let mut high = hex(CODEC8_EX1);
    high[last - 3] = 1;
    assert!(matches!(problem(&high), PacketError::CrcMismatch { .. }));

    assert_eq!(
        problem(&framed(&[0x0D, 1, 1])),
        PacketError::UnknownCodec { codec: 0x0D }
    );
    assert_eq!(
        problem(&framed(&[0x08, 1, 2])),
        PacketError::CountMismatch {
            first: 1,
            second: 2
        }
    );
    // A packet without records is well-formed (and acknowledged with 0).
    let (frame, _) = FrameDecoder::new()
        .decode(&framed(&[0x08, 0, 0]))
        .unwrap()
        .unwrap();
    assert_eq!(
        frame,
        Frame::Avl(AvlPacket {
            codec: Codec::Codec8,
            records: vec![]
        })
    );
}

#[test]
fn record_refusals_are_named() {
    let data = hex(CODEC8_EX3);
    let data = &data[8..data.len() - 4];
    // The second record cut short: the data ends inside it.
    let mut short = data[..data.len() - 5].to_vec();
    short.push(2);
    assert_eq!(
        problem(&framed(&short)),
        PacketError::Truncated { record: 1 }
    );
    // One record announced, two present: the second (32 bytes) is left over.
    let mut one = data.to_vec();
    one[1] = 1;
    *one.last_mut().unwrap() = 1;
    assert_eq!(
        problem(&framed(&one)),
        PacketError::TrailingBytes { extra: 32 }
    );
    // Codec 16 data read as Codec 8 does not fit.
    let mut c16 = hex(CODEC16_EX);
    c16[8] = 0x08;
    let c16 = &c16[8..c16.len() - 4];
    assert!(matches!(
        problem(&framed(c16)),
        PacketError::TrailingBytes { .. } | PacketError::Truncated { .. }
    ));
}

#[test]
fn codec12_refusals_are_named() {
    let text = |kind: u8, len: u32, q1: u8, q2: u8| {
        let mut d = vec![0x0C, q1, kind];
        d.extend(len.to_be_bytes());
        d.extend(b"getver");
        d.push(q2);
        framed(&d)
    };
    assert!(FrameDecoder::new().decode(&text(5, 6, 1, 1)).is_ok());
    assert_eq!(
        problem(&text(0x0E, 6, 1, 1)),
        PacketError::UnknownMessageType { kind: 0x0E }
    );
    assert_eq!(
        problem(&text(6, 7, 1, 1)),
        PacketError::TextLength {
            announced: 7,
            actual: 6
        }
    );
    assert_eq!(
        problem(&text(6, 6, 1, 2)),
        PacketError::CountMismatch {
            first: 1,
            second: 2
        }
    );
    assert_eq!(
        problem(&text(6, 6, 2, 2)),
        PacketError::BadQuantity { quantity: 2 }
    );
    assert_eq!(
        problem(&framed(&[0x0C, 1, 6, 0, 1])),
        PacketError::Truncated { record: 0 }
    );
}

#[test]
fn command_text_refusals_are_named() {
    assert_eq!(
        encode_command("setdigout 1°"),
        Err(EncodeError::NotAscii { at: 11, byte: 0xC2 })
    );
    let long = "x".repeat(MAX_COMMAND_LEN + 1);
    assert_eq!(
        encode_command(&long),
        Err(EncodeError::CommandTooLong {
            len: MAX_COMMAND_LEN + 1,
            max: MAX_COMMAND_LEN
        })
    );
    assert!(encode_command(&long[1..]).is_ok());
    assert_eq!(
        EncodeError::NotAscii { at: 11, byte: 0xC2 }.to_string(),
        "command text byte 11 is 0xc2, not ASCII"
    );
}

fn one_record(codec: Codec, io: Vec<IoElement>) -> AvlPacket {
    AvlPacket {
        codec,
        records: vec![AvlRecord {
            timestamp_ms: 1,
            priority: 0,
            gps: no_fix(),
            event_io: 0,
            generation_type: (codec == Codec::Codec16).then_some(7),
            io,
        }],
    }
}

#[test]
fn encode_refusals_are_named() {
    let wide = vec![el(256, IoValue::U8(1))];
    assert_eq!(
        encode_avl(&one_record(Codec::Codec8, wide.clone())),
        Err(EncodeError::IdTooLarge {
            codec: Codec::Codec8,
            id: 256
        })
    );
    assert!(encode_avl(&one_record(Codec::Codec16, wide)).is_ok());
    let nx = vec![el(385, IoValue::Bytes(vec![1, 2]))];
    for codec in [Codec::Codec8, Codec::Codec16] {
        assert!(matches!(
            encode_avl(&one_record(codec, nx.clone())),
            Err(EncodeError::NxNotSupported { .. })
        ));
    }
    assert!(encode_avl(&one_record(Codec::Codec8Ext, nx)).is_ok());
    let huge = vec![el(1, IoValue::Bytes(vec![0; 65_536]))];
    assert_eq!(
        encode_avl(&one_record(Codec::Codec8Ext, huge)),
        Err(EncodeError::NxTooLong { id: 1, len: 65_536 })
    );
    let many: Vec<_> = (0..256).map(|id| el(id, IoValue::U8(0))).collect();
    assert_eq!(
        encode_avl(&one_record(Codec::Codec16, many)),
        Err(EncodeError::TooManyElements {
            codec: Codec::Codec16,
            count: 256,
            max: 255
        })
    );
    let mut no_generation = one_record(Codec::Codec16, vec![]);
    no_generation.records[0].generation_type = None;
    assert_eq!(
        encode_avl(&no_generation),
        Err(EncodeError::GenerationType {
            codec: Codec::Codec16
        })
    );
    let mut stray = one_record(Codec::Codec8, vec![]);
    stray.records[0].generation_type = Some(0);
    assert_eq!(
        encode_avl(&stray).unwrap_err().to_string(),
        "Codec8 records cannot carry a generation type"
    );
    let mut crowded = one_record(Codec::Codec8, vec![]);
    crowded.records = vec![crowded.records[0].clone(); 256];
    assert_eq!(
        encode_avl(&crowded),
        Err(EncodeError::TooManyRecords { count: 256 })
    );
    assert_eq!(records_ack(300), [0, 0, 1, 44]);
}

#[test]
fn io_total_is_read_not_enforced() {
    // Codec 8's first example with its total IO count (5) changed to 0: still read,
    // as the per-width counts say, and written back with the right total.
    let mut data = hex(CODEC8_EX1);
    let data = &mut data[8..62];
    assert_eq!(data[2 + 25], 5);
    data[2 + 25] = 0;
    let (frame, _) = FrameDecoder::new().decode(&framed(data)).unwrap().unwrap();
    assert_eq!(frame, Frame::Avl(avl(CODEC8_EX1)));
}

#[test]
fn more_elements_than_the_total_can_say_decode_but_do_not_encode() {
    // What the fuzzer found first: a Codec 8 record with 255 one-byte elements and one
    // two-byte element; its one-byte total cannot say 256.
    let mut data = vec![0x08, 1];
    data.extend([0; 8 + 1 + 15]);
    data.extend([0, 0, 255]); // event IO, total (not enforced), N1
    data.extend((0..=254).flat_map(|id| [id, 1]));
    data.extend([1, 7, 0, 9, 0, 0, 1]); // N2 and its element, N4, N8, count
    let (frame, _) = FrameDecoder::new().decode(&framed(&data)).unwrap().unwrap();
    let Frame::Avl(packet) = frame else {
        panic!("not AVL")
    };
    assert_eq!(packet.records[0].io.len(), 256);
    assert_eq!(
        encode_avl(&packet),
        Err(EncodeError::TooManyElements {
            codec: Codec::Codec8,
            count: 256,
            max: 255
        })
    );
}
