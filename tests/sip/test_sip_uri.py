"""URI and name-addr parsing with literal header values."""

import pytest

from agent.errors import SipParseError
from agent.sip.uri import parse_name_addr, parse_uri, split_header_values


def test_sip_uri_with_port_and_params():
    uri = parse_uri("sip:alice@example.com:5070;transport=TCP;LR")
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.host == "example.com"
    assert uri.port == 5070
    assert uri.params == {"transport": "TCP", "lr": ""}
    assert uri.raw == "sip:alice@example.com:5070;transport=TCP;LR"


def test_sips_uri_scheme_is_lowercased():
    uri = parse_uri("SIPS:bob@secure.example.org")
    assert uri.scheme == "sips"
    assert uri.user == "bob"
    assert uri.host == "secure.example.org"
    assert uri.port is None


def test_percent_escaped_user_is_unescaped():
    uri = parse_uri("sip:%2A72%23100@pbx.local")
    assert uri.user == "*72#100"


def test_ipv6_host_with_port():
    uri = parse_uri("sip:9876@[2001:db8::1]:5060;transport=udp")
    assert uri.host == "2001:db8::1"
    assert uri.port == 5060
    assert uri.params == {"transport": "udp"}


def test_ipv6_host_without_port_or_user():
    uri = parse_uri("sip:[2001:db8::10]")
    assert uri.user is None
    assert uri.host == "2001:db8::10"
    assert uri.port is None


def test_uri_without_user_and_with_headers():
    uri = parse_uri("sip:proxy.example.com;lr?Subject=hi")
    assert uri.user is None
    assert uri.host == "proxy.example.com"
    assert uri.params == {"lr": ""}


def test_password_is_dropped_from_user():
    assert parse_uri("sip:carol:secret@h.example").user == "carol"


def test_tel_uri_with_phone_context():
    uri = parse_uri("tel:9171969136;phone-context=+7")
    assert uri.scheme == "tel"
    assert uri.user == "9171969136"
    assert uri.host == ""
    assert uri.params == {"phone-context": "+7"}


def test_tel_uri_global_number():
    uri = parse_uri("tel:+1-201-555-0123")
    assert uri.user == "+1-201-555-0123"
    assert uri.params == {}


def test_unknown_scheme_kept_raw():
    uri = parse_uri("urn:service:sos")
    assert uri.scheme == "urn"
    assert uri.user is None
    assert uri.raw == "urn:service:sos"


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "no-scheme-here", "sip:user@host:99999", "sip:user@host:abc", "sip:[2001:db8::1",
     "sip:user@", "1sip:foo", "tel:"],
)
def test_hopeless_uris_raise(bad):
    with pytest.raises(SipParseError):
        parse_uri(bad)


def test_quoted_display_name_with_escapes_and_tag():
    na = parse_name_addr('"Alice \\"Al\\" O\\\\Neil" <sip:alice@a.example>;tag=1928301774')
    assert na.display == 'Alice "Al" O\\Neil'
    assert na.uri.user == "alice"
    assert na.tag == "1928301774"
    assert na.params == {"tag": "1928301774"}


def test_quoted_utf8_display_name():
    na = parse_name_addr('"Jürgen Müller 日本" <sip:jm@example.de>')
    assert na.display == "Jürgen Müller 日本"


def test_quoted_display_name_with_comma_and_angle():
    na = parse_name_addr('"Smith, John <boss>" <sip:js@x.example>')
    assert na.display == "Smith, John <boss>"
    assert na.uri.user == "js"


def test_unquoted_display_name():
    na = parse_name_addr("Bob Smith <sip:bob@biloxi.example.com>;tag=a6c85cf")
    assert na.display == "Bob Smith"
    assert na.uri.host == "biloxi.example.com"
    assert na.tag == "a6c85cf"


def test_no_display_name():
    na = parse_name_addr("<sip:9275890000@VMSSM;user=phone>")
    assert na.display is None
    assert na.uri.user == "9275890000"
    assert na.uri.params == {"user": "phone"}
    assert na.tag is None


def test_empty_quoted_display_name_is_empty_string():
    na = parse_name_addr('"" <sip:anon@anonymous.invalid>')
    assert na.display == ""


def test_addr_spec_params_belong_to_header():
    # RFC 3261 20.10: without <>, ';' parameters are header parameters.
    na = parse_name_addr("sip:carol@chicago.example.com;tag=887s")
    assert na.display is None
    assert na.uri.params == {}
    assert na.uri.user == "carol"
    assert na.tag == "887s"


def test_addr_spec_tel_with_header_param():
    na = parse_name_addr("tel:+4930123;tag=x1")
    assert na.uri.user == "+4930123"
    assert na.tag == "x1"


def test_header_params_keys_are_lowercased_and_quoted_values_unquoted():
    na = parse_name_addr('<sip:a@b>;TAG=abc;reason="no answer";privacy=off')
    assert na.params == {"tag": "abc", "reason": "no answer", "privacy": "off"}


@pytest.mark.parametrize(
    "bad",
    ['"unterminated <sip:a@b>', "<sip:a@b", '"Name" sip:a@b', "", "foo bar baz"],
)
def test_hopeless_name_addrs_raise(bad):
    with pytest.raises(SipParseError):
        parse_name_addr(bad)


def test_split_header_values_respects_quotes_and_angles():
    value = '"Doe, Jane" <sip:jd@x;a=1,2>, <tel:+123>;x="a,b" , sip:plain@y'
    assert split_header_values(value) == [
        '"Doe, Jane" <sip:jd@x;a=1,2>',
        '<tel:+123>;x="a,b"',
        "sip:plain@y",
    ]


def test_split_header_values_skips_empty_elements():
    assert split_header_values(" a , ,b,") == ["a", "b"]


def test_bare_ipv6_host_with_trailing_port_group():
    # From sip_ipv6_udp.pcap: a bracket-less IPv6 address followed by ":5060".
    uri = parse_uri("sip:4321@fec0:0:0:0:216:d3ff:fe0d:22c:5060")
    assert uri.host == "fec0:0:0:0:216:d3ff:fe0d:22c"
    assert uri.port == 5060
    bare = parse_uri("sip:9876@fe80:0:0:0:21a:a0ff:fe07:32e0")
    assert bare.host == "fe80:0:0:0:21a:a0ff:fe07:32e0"
    assert bare.port is None
