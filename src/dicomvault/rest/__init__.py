"""The REST front end (Orthanc's API): parse the request, call one core function, render."""
