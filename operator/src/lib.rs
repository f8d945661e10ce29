//! The operator side of Rudder and the home of the `rudder` binary's command line: rendering an
//! `IstioOperator` into a control plane ([`render`], pure), the rendered [`manifest`], and the
//! verbs under [`cli`].

pub mod cli;
pub mod install;
pub mod manifest;
pub mod render;
pub mod tag;
