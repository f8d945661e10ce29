//! Load client (filled in below).
