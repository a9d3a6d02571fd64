"""A CMS built with spyne, a SOAP stack this project did not write, for
tests/foreign_peers.rs. Its WSDL declares spyne's own soapAction values (the bare
operation name, e.g. soapAction="ValidateCustomer"), not ours; like many real SOAP
servers it dispatches by the SOAPAction header, so a request whose header does not
name an operation of the WSDL gets a soap:Server fault with HTTP 500 (what the
issue saw: every call failing, the circuit opening).

ValidateCustomer(CustomerId, OrderId) -> Valid, CustomerName, Tier; a CustomerId
starting with "unknown" is refused with a Client fault. CancelOrder(OrderId) ->
Cancelled. Listens on the port given as argv[1] (default: any free port) and prints
"PORT <n>" once listening; each call's SOAPAction goes to stderr.
"""
import logging
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from spyne import Application, Boolean, Fault, ServiceBase, Unicode, rpc
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

NAMESPACE = "http://swiftlogistics.com/cms"
ACTIONS = {"ValidateCustomer", "CancelOrder"}


class Cms(ServiceBase):
    @rpc(Unicode, Unicode, _returns=(Boolean, Unicode, Unicode),
         _out_variable_names=("Valid", "CustomerName", "Tier"))
    def ValidateCustomer(ctx, CustomerId, OrderId):
        if CustomerId.startswith("unknown"):
            raise Fault(faultcode="Client", faultstring="Unknown customer")
        return True, "John Doe", "premium"

    @rpc(Unicode, _returns=Boolean, _out_variable_name="Cancelled")
    def CancelOrder(ctx, OrderId):
        return True


soap = WsgiApplication(Application([Cms], tns=NAMESPACE, name="CmsService",
                                   in_protocol=Soap11(validator="lxml"),
                                   out_protocol=Soap11()))

FAULT = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    "<soap:Fault><faultcode>soap:Server</faultcode>"
    "<faultstring>no operation for SOAPAction {}</faultstring></soap:Fault>"
    "</soap:Body></soap:Envelope>"
)


def dispatch_by_soap_action(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        action = environ.get("HTTP_SOAPACTION", "").strip().strip('"')
        print(f"SOAPAction {action}", file=sys.stderr, flush=True)
        if action not in ACTIONS:
            body = FAULT.format(action or "(none)").encode("utf-8")
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/xml; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
            return [body]
    return soap(environ, start_response)


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


logging.basicConfig(level=logging.ERROR)
# A refused customer is an answer, not an error of the server.
logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
server = make_server("127.0.0.1", port, dispatch_by_soap_action, handler_class=Quiet)
print(f"PORT {server.server_port}", flush=True)
server.serve_forever()
