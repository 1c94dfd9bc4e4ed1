//! Authentication and authorization: Docker token auth (JWT bearer tokens verified against a certificate bundle).
