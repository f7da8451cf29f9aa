syncd: no syncd daemon is running at /tmp/docaudit/fake.sock (start one with `syncd run`)
