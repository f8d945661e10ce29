//! The operator side of Rudder and the home of the `rudder` binary's command line: rendering an
//! `IstioOperator` into a control plane ([`render`], pure), the rendered [`manifest`], and the
//! verbs under [`cli`], including what `operator init` installs ([`operator_init`]).

pub mod cli;
pub mod controller;
pub mod injector_watch;
pub mod install;
pub mod logging;
pub mod manifest;
pub mod mesh_watch;
pub mod operator_init;
pub mod render;
pub mod signals;
pub mod tag;
