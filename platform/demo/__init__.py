"""`make demo`: a whole federated study on this machine, from bundled data to a written report."""
