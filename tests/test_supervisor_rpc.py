"""supervisord's answers read with ElementTree (`_TreeReader`) come out as xmlrpc.client reads them."""

import xmlrpc.client

import pytest

from deployments.runtimes.local.supervisor import _TreeReader

ANSWERS = [
    ([{"name": "web", "group": "d1-web", "pid": 4242, "statename": "RUNNING", "exitstatus": 0, "spawnerr": "", "now": 1.5}],),
    ([],),
    (True,),
    ([[True, False], {"nested": {"list": [1, "two", 3.0]}}, "ünïcode & <markup>"],),
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_an_answer_reads_as_xmlrpc_reads_it(answer) -> None:
    body = xmlrpc.client.dumps(answer, methodresponse=True).encode()
    ours = _TreeReader()
    ours.feed(body[:10])
    ours.feed(body[10:])
    parser, unmarshaller = xmlrpc.client.getparser()
    parser.feed(body)
    parser.close()
    assert ours.close() == unmarshaller.close() == answer


def test_a_fault_is_raised_as_xmlrpc_raises_it() -> None:
    ours = _TreeReader()
    ours.feed(xmlrpc.client.dumps(xmlrpc.client.Fault(10, "BAD_NAME: d9-web")).encode())
    with pytest.raises(xmlrpc.client.Fault) as raised:
        ours.close()
    assert (raised.value.faultCode, raised.value.faultString) == (10, "BAD_NAME: d9-web")
