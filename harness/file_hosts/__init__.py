"""Local fakes of the file hosts' APIs (issue 19), built from their documented request and answer shapes."""
