//! outrigger's benchmarks. The micro-benchmarks live in `benches/`; run them with
//! `cargo bench -p outrigger-benches`.
