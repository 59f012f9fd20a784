//! Every file of `corpus/<target>/` (the seeds, and what fuzzing kept or found) through
//! its target, on stable, in the normal suite.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        body(&data);
        n += 1;
    }
    assert!(n > 0, "{}: no corpus", dir.display());
    println!("{target}: {n} inputs replayed");
}

#[test]
fn chunk_decoder() {
    replay("chunk_decoder", pushcast_fuzz::chunk_decoder);
}

#[test]
fn amf0() {
    replay("amf0", pushcast_fuzz::amf0);
}

#[test]
fn server_session() {
    replay("server_session", pushcast_fuzz::server_session);
}

#[test]
fn client_session() {
    replay("client_session", pushcast_fuzz::client_session);
}

#[test]
fn ts_muxer() {
    replay("ts_muxer", pushcast_fuzz::ts_muxer);
}

#[test]
fn rest_json() {
    replay("rest_json", pushcast_fuzz::rest_json);
}

#[test]
fn media_tags() {
    replay("media_tags", pushcast_fuzz::media_tags);
}

#[test]
fn ts_demuxer() {
    replay("ts_demuxer", pushcast_fuzz::ts_demuxer);
}
