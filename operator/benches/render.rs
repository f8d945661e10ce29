//! Rendering the demo profile end to end (merge, validate, build, label, sort) and writing it
//! as YAML. Target: at most 20 ms per render.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rudder_operator::render::{RenderRequest, render};

fn demo(c: &mut Criterion) {
    let req = RenderRequest { set: vec!["profile=demo".into()], ..RenderRequest::default() };
    c.bench_function("render demo profile", |b| b.iter(|| render(black_box(&req))));
    c.bench_function("render demo profile to yaml", |b| b.iter(|| render(black_box(&req)).map(|m| m.to_yaml())));
}

criterion_group!(benches, demo);
criterion_main!(benches);
