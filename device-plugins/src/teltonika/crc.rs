//! CRC-16/IBM as Teltonika uses it (also catalogued as CRC-16/ARC): polynomial 0x8005
//! reflected (0xA001), initial value 0, no final XOR. Check value: `crc16(b"123456789")`
//! is 0xBB3D.
//!
//! Every Teltonika TCP frame (AVL data, Codec 12) carries it over the bytes from the
//! codec id to the second count, in four bytes of which the first two are zero.

/// One entry per byte value, computed at compile time.
const TABLE: [u16; 256] = table();

const fn table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// The CRC-16/IBM of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0, |crc, &byte| {
        (crc >> 8) ^ TABLE[usize::from((crc as u8) ^ byte)]
    })
}

#[cfg(test)]
mod tests {
    use super::crc16;

    #[test]
    fn check_value_of_the_catalogue() {
        assert_eq!(crc16(b"123456789"), 0xBB3D);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn table_agrees_with_the_bitwise_definition() {
        fn bitwise(data: &[u8]) -> u16 {
            let mut crc = 0u16;
            for &byte in data {
                crc ^= u16::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xA001
                    } else {
                        crc >> 1
                    };
                }
            }
            crc
        }
        let data: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        for end in 0..data.len() {
            assert_eq!(crc16(&data[..end]), bitwise(&data[..end]));
        }
    }
}
