"""Studies: the protocol (declarative, hashed), invited hospitals and their stewards' approvals."""
