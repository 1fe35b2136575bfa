"""The e2e server runs with the classic cache where the host knows it (newer hosts default to a RAM-pressure cache),
and the flag is left out for a host that does not know it."""
from editlab.client import server as server_mod


def test_live_server_runs_with_the_classic_cache(server):
    argv = server.client.system_stats()["system"]["argv"]  # the host's own report of how it was started
    assert "--cache-classic" in argv


def test_flag_left_out_for_a_host_without_it(tmp_path, monkeypatch):
    host = tmp_path / "ComfyUI"
    (host / "comfy").mkdir(parents=True)
    (host / "main.py").write_text("")
    (host / "comfy" / "cli_args.py").write_text('parser.add_argument("--cpu", action="store_true")\n')
    monkeypatch.setenv("COMFYUI_PATH", str(host))
    cmd = server_mod.server_command(8188, tmp_path / "work", cpu=True)
    assert "--cache-classic" not in cmd and "--cpu" in cmd
    (host / "comfy" / "cli_args.py").write_text('cache_group.add_argument("--cache-classic", action="store_true")\n')
    assert "--cache-classic" in server_mod.server_command(8188, tmp_path / "work", cpu=True)
