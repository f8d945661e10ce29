//! The traffic scenarios of `examples/`, each applied to a [`LocalMesh`](crate::mesh::LocalMesh)
//! and checked through real Envoy. (Being written.)
