#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleetmq_fuzz::teltonika::check(data));
