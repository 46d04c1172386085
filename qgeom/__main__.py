from qgeom.cli import app

app(prog_name="qgeom")
