//! What a simulated tracker reports: a vehicle driving a circle at a steady speed, and
//! the Codec 8 Extended packets of AVL records that describe it, with the IO elements an
//! FMB/FMC tracker in a car sends (ignition, movement, GSM signal, voltages, odometer,
//! ICCID, and the VIN as a variable-length NX element).

use std::f64::consts::TAU;

use fleetmq_device_plugins::teltonika::{
    encode_avl, AvlPacket, AvlRecord, Codec, Gps, IoElement, IoValue,
};

/// Metres per degree of latitude (and of longitude at the equator).
pub const METRES_PER_DEGREE: f64 = 111_320.0;
/// Where the circles are: Vilnius, where Teltonika's examples come from.
const HOME: (f64, f64) = (54.6872, 25.2797);

/// AVL ids (Teltonika's FMB/FMC parameter list).
pub mod avl_id {
    pub const IGNITION: u16 = 239;
    pub const MOVEMENT: u16 = 240;
    pub const GSM_SIGNAL: u16 = 21;
    pub const GNSS_STATUS: u16 = 69;
    pub const EXTERNAL_VOLTAGE: u16 = 66;
    pub const BATTERY_VOLTAGE: u16 = 67;
    pub const GNSS_PDOP: u16 = 181;
    pub const TOTAL_ODOMETER: u16 = 16;
    pub const ICCID1: u16 = 11;
    /// Variable length: 17 ASCII characters.
    pub const VIN: u16 = 256;
}

/// A circle driven at a steady speed, counter-clockwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Centre, degrees.
    pub center: (f64, f64),
    pub radius_m: f64,
    pub speed_kmh: f64,
    /// Where on the circle the drive starts, radians from east.
    pub phase: f64,
}

impl Route {
    /// The `index`th tracker's circle: its own centre, radius, speed and start.
    pub fn for_index(index: usize) -> Route {
        let i = index as f64;
        Route {
            center: (
                HOME.0 + (i % 100.0) * 0.01,
                HOME.1 + (i / 100.0).floor() * 0.01,
            ),
            radius_m: 300.0 + (index % 7) as f64 * 100.0,
            speed_kmh: 20.0 + (index % 50) as f64,
            phase: (index % 360) as f64 * TAU / 360.0,
        }
    }

    /// Metres driven after `elapsed_ms`.
    pub fn distance_m(&self, elapsed_ms: u64) -> f64 {
        self.speed_kmh / 3.6 * elapsed_ms as f64 / 1e3
    }

    /// The GPS element after `elapsed_ms` of driving.
    pub fn at(&self, elapsed_ms: u64) -> Gps {
        let theta = self.phase + self.distance_m(elapsed_ms) / self.radius_m;
        let (north_m, east_m) = (self.radius_m * theta.sin(), self.radius_m * theta.cos());
        let lat = self.center.0 + north_m / METRES_PER_DEGREE;
        let lon = self.center.1 + east_m / (METRES_PER_DEGREE * self.center.0.to_radians().cos());
        // Counter-clockwise: the heading is the tangent (east, north) = (-sin, cos).
        let heading = (-theta.sin())
            .atan2(theta.cos())
            .to_degrees()
            .rem_euclid(360.0);
        Gps {
            longitude: (lon * 1e7).round() as i32,
            latitude: (lat * 1e7).round() as i32,
            altitude: 112,
            angle: heading.round() as u16 % 360,
            satellites: 11,
            speed: self.speed_kmh.round() as u16,
        }
    }
}

/// One tracker's record source: its route, and the timestamps it already used.
#[derive(Debug, Clone)]
pub struct Records {
    route: Route,
    started_ms: u64,
    last_ts_ms: u64,
    iccid: u64,
    vin: [u8; 17],
}

impl Records {
    /// The `index`th tracker's records, its drive starting at `now_ms`.
    pub fn new(index: usize, now_ms: u64) -> Records {
        let mut vin = *b"WVWZZZ1JZ3W000000";
        let serial = format!("{:06}", index % 1_000_000);
        vin[11..].copy_from_slice(serial.as_bytes());
        Records {
            route: Route::for_index(index),
            started_ms: now_ms,
            last_ts_ms: 0,
            iccid: 8_937_002_000_000_000_000 + index as u64,
            vin,
        }
    }

    /// Where the vehicle is at `now_ms`.
    pub fn position(&self, now_ms: u64) -> Gps {
        self.route.at(now_ms.saturating_sub(self.started_ms))
    }

    /// One record taken at `ts_ms`.
    pub fn record(&self, ts_ms: u64) -> AvlRecord {
        let elapsed = ts_ms.saturating_sub(self.started_ms);
        let odometer = self.route.distance_m(elapsed) as u32;
        let io = vec![
            io(avl_id::IGNITION, IoValue::U8(1)),
            io(avl_id::MOVEMENT, IoValue::U8(1)),
            io(avl_id::GSM_SIGNAL, IoValue::U8(4)),
            io(avl_id::GNSS_STATUS, IoValue::U8(1)),
            io(
                avl_id::EXTERNAL_VOLTAGE,
                IoValue::U16(12_400 + (elapsed % 400) as u16),
            ),
            io(avl_id::BATTERY_VOLTAGE, IoValue::U16(4_100)),
            io(avl_id::GNSS_PDOP, IoValue::U16(9)),
            io(avl_id::TOTAL_ODOMETER, IoValue::U32(odometer)),
            io(avl_id::ICCID1, IoValue::U64(self.iccid)),
            io(avl_id::VIN, IoValue::Bytes(self.vin.to_vec())),
        ];
        AvlRecord {
            timestamp_ms: ts_ms,
            priority: 0,
            gps: self.route.at(elapsed),
            event_io: 0,
            generation_type: None,
            io,
        }
    }

    /// A Codec 8 Extended packet of `count` (1 to 255) records, the newest taken at
    /// `now_ms` and the others `spacing_ms` apart before it. Timestamps only grow: a
    /// record is never older than, or as old as, one already sent.
    pub fn packet(&mut self, count: u8, now_ms: u64, spacing_ms: u64) -> Vec<u8> {
        let count = count.max(1);
        let span = u64::from(count - 1) * spacing_ms;
        let first = now_ms.saturating_sub(span).max(self.last_ts_ms + 1);
        let records: Vec<AvlRecord> = (0..u64::from(count))
            .map(|i| self.record(first + i * spacing_ms.max(1)))
            .collect();
        self.last_ts_ms = records.last().map_or(self.last_ts_ms, |r| r.timestamp_ms);
        let packet = AvlPacket {
            codec: Codec::Codec8Ext,
            records,
        };
        // Every field is within what Codec 8 Extended carries (ids < 65,536, at most
        // 255 records, one 17-byte NX element).
        encode_avl(&packet).expect("a simulated packet is always encodable")
    }
}

fn io(id: u16, value: IoValue) -> IoElement {
    IoElement { id, value }
}
