"""Reports: terminal panels and tables (`terminal`), export formats, the HTML page
(`html` + `templates/`), figures (`figures`, matplotlib only) and the pictures drawn from
run folders (`pictures`). Reads records; writes only what it is asked to draw."""
