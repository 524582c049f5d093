"""An FTP server for load: pyftpdlib (async), anonymous, read-only, no connection limit.

load_server.py ADDRESS DIRECTORY
"""
import logging
import resource
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

# As many descriptors as the hard limit allows (each session holds one or two).
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
logging.basicConfig(level=logging.WARNING)
authorizer = DummyAuthorizer()
authorizer.add_anonymous(sys.argv[2])
FTPHandler.authorizer = authorizer
FTPHandler.passive_ports = range(20000, 60000)
FTPHandler.timeout = 3600
# A deep accept queue: thousands of sessions open at once.
server = FTPServer((sys.argv[1], 21), FTPHandler, backlog=4096)
server.max_cons = 30000
server.max_cons_per_ip = 0
server.serve_forever()
