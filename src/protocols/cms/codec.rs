//! SOAP 1.1 envelopes of the CMS, without IO.
//!
//! The CMS is a legacy system whose stack we do not control, so decoding works on
//! the XML information set rather than on text: elements are matched by namespace
//! URI and local name, whatever prefixes, whitespace, comments, extra attributes or
//! unknown elements the other side sends. Encoding always produces one canonical
//! form. Input is capped and every failure is a `CodecError`, never a panic.

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use std::borrow::Cow;

pub const CMS_NAMESPACE: &str = "http://swiftlogistics.com/cms";
pub const SOAP_ENVELOPE_NAMESPACE: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Larger envelopes are refused unread: no CMS message comes close, and the cap
/// bounds the memory one request or reply can take.
pub(crate) const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Nesting and element-count caps keep hostile but small documents cheap too.
const MAX_DEPTH: usize = 32;
const MAX_ELEMENTS: usize = 4096;

/// An operation of the CMS with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmsCall {
    ValidateCustomer {
        customer_id: String,
        order_id: String,
    },
    CancelOrder {
        order_id: String,
    },
}

impl CmsCall {
    pub(crate) fn operation_name(&self) -> &'static str {
        match self {
            Self::ValidateCustomer { .. } => "ValidateCustomer",
            Self::CancelOrder { .. } => "CancelOrder",
        }
    }

    /// The quoted URI SOAP 1.1 expects in the `SOAPAction` HTTP header.
    pub(crate) fn soap_action(&self) -> String {
        format!("\"{CMS_NAMESPACE}/{}\"", self.operation_name())
    }
}

/// A request envelope: the call in the Body, the idempotency key in the Header so a
/// redelivered call can be recognised without understanding its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmsRequest {
    pub idempotency_key: Option<String>,
    pub call: CmsCall,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerValidation {
    pub valid: bool,
    pub customer_name: String,
    pub tier: String,
}

/// Who SOAP 1.1 blames for a fault: `Client` means the request cannot succeed as
/// sent (for the CMS: a business refusal), anything else is the server's problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Client,
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapFault {
    pub kind: FaultKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmsReply {
    Validation(CustomerValidation),
    /// `false` means the CMS had no such order, which leaves nothing to undo.
    Cancellation {
        cancelled: bool,
    },
    Fault(SoapFault),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("envelope larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("not a SOAP 1.1 envelope: {0}")]
    NotSoap(String),
    #[error("unexpected envelope content: {0}")]
    Content(String),
}

pub fn encode_request(request: &CmsRequest) -> String {
    let header = request.idempotency_key.as_deref().map(|key| {
        format!(
            "<IdempotencyKey xmlns=\"{CMS_NAMESPACE}\">{}</IdempotencyKey>",
            escape(key)
        )
    });
    let body = match &request.call {
        CmsCall::ValidateCustomer {
            customer_id,
            order_id,
        } => format!(
            "<ValidateCustomer xmlns=\"{CMS_NAMESPACE}\"><CustomerId>{}</CustomerId><OrderId>{}</OrderId></ValidateCustomer>",
            escape(customer_id),
            escape(order_id)
        ),
        CmsCall::CancelOrder { order_id } => format!(
            "<CancelOrder xmlns=\"{CMS_NAMESPACE}\"><OrderId>{}</OrderId></CancelOrder>",
            escape(order_id)
        ),
    };
    envelope(header.as_deref(), &body)
}

pub fn encode_reply(reply: &CmsReply) -> String {
    let body = match reply {
        CmsReply::Validation(v) => format!(
            "<ValidateCustomerResponse xmlns=\"{CMS_NAMESPACE}\"><Valid>{}</Valid><CustomerName>{}</CustomerName><Tier>{}</Tier></ValidateCustomerResponse>",
            v.valid,
            escape(&v.customer_name),
            escape(&v.tier)
        ),
        CmsReply::Cancellation { cancelled } => format!(
            "<CancelOrderResponse xmlns=\"{CMS_NAMESPACE}\"><Cancelled>{cancelled}</Cancelled></CancelOrderResponse>"
        ),
        CmsReply::Fault(fault) => {
            let code = match fault.kind {
                FaultKind::Client => "soap:Client",
                FaultKind::Server => "soap:Server",
            };
            format!(
                "<soap:Fault><faultcode>{code}</faultcode><faultstring>{}</faultstring></soap:Fault>",
                escape(&fault.message)
            )
        }
    };
    envelope(None, &body)
}

fn envelope(header: Option<&str>, body: &str) -> String {
    let header = header
        .map(|h| format!("<soap:Header>{h}</soap:Header>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP_ENVELOPE_NAMESPACE}\">{header}<soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

pub fn decode_request(bytes: &[u8]) -> Result<CmsRequest, CodecError> {
    let Envelope { header, body } = parse_envelope(bytes)?;
    let idempotency_key = header
        .as_ref()
        .and_then(|h| {
            h.children
                .iter()
                .find(|e| e.is_cms_or_unqualified("IdempotencyKey"))
        })
        .map(|e| e.text.clone());
    for entry in body
        .children
        .iter()
        .filter(|e| e.namespace.as_deref() == Some(CMS_NAMESPACE))
    {
        let call = match entry.name.as_str() {
            "ValidateCustomer" => CmsCall::ValidateCustomer {
                customer_id: entry.field("CustomerId")?.text.clone(),
                order_id: entry.field("OrderId")?.text.clone(),
            },
            "CancelOrder" => CmsCall::CancelOrder {
                order_id: entry.field("OrderId")?.text.clone(),
            },
            _ => continue,
        };
        return Ok(CmsRequest {
            idempotency_key,
            call,
        });
    }
    Err(CodecError::Content(
        "the Body carries no CMS operation".into(),
    ))
}

pub fn decode_reply(bytes: &[u8]) -> Result<CmsReply, CodecError> {
    let Envelope { body, .. } = parse_envelope(bytes)?;
    for entry in &body.children {
        match (entry.namespace.as_deref(), entry.name.as_str()) {
            (Some(SOAP_ENVELOPE_NAMESPACE), "Fault") => {
                return decode_fault(entry).map(CmsReply::Fault);
            }
            (Some(CMS_NAMESPACE), "ValidateCustomerResponse") => {
                let valid = parse_boolean(&entry.field("Valid")?.text)?;
                let optional_text = |name: &str| entry.field(name).map(|e| e.text.clone());
                let (customer_name, tier) = if valid {
                    (optional_text("CustomerName")?, optional_text("Tier")?)
                } else {
                    (
                        optional_text("CustomerName").unwrap_or_default(),
                        optional_text("Tier").unwrap_or_default(),
                    )
                };
                return Ok(CmsReply::Validation(CustomerValidation {
                    valid,
                    customer_name,
                    tier,
                }));
            }
            (Some(CMS_NAMESPACE), "CancelOrderResponse") => {
                let flag = entry
                    .field("Cancelled")
                    .or_else(|_| entry.field("Success"))?;
                return Ok(CmsReply::Cancellation {
                    cancelled: parse_boolean(&flag.text)?,
                });
            }
            _ => {}
        }
    }
    Err(CodecError::Content(
        "the Body carries no CMS response or fault".into(),
    ))
}

fn decode_fault(fault: &Element) -> Result<SoapFault, CodecError> {
    let code = fault.field("faultcode")?.text.trim();
    // A qualified name such as `soap:Client` or `Client.Authentication`: SOAP 1.1
    // refines codes with dots, so any `Client...` is still the caller's fault.
    let local = code.rsplit(':').next().unwrap_or(code);
    let kind = if local.starts_with("Client") {
        FaultKind::Client
    } else {
        FaultKind::Server
    };
    let message = fault
        .field("faultstring")
        .map(|e| e.text.clone())
        .unwrap_or_default();
    Ok(SoapFault { kind, message })
}

/// `xsd:boolean` after whitespace collapsing.
fn parse_boolean(text: &str) -> Result<bool, CodecError> {
    match text.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(CodecError::Content(format!("{other:?} is not a boolean"))),
    }
}

/// Escapes for element content and attribute values. Characters XML 1.0 cannot
/// carry at all become U+FFFD rather than producing a document nobody can parse;
/// `\r` is written as a reference so that conforming parsers do not normalise it.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    let plain = |c: char| !matches!(c, '&' | '<' | '>' | '"' | '\'' | '\r') && is_xml_char(c);
    if text.chars().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    Cow::Owned(out)
}

/// The `Char` production of XML 1.0.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The parts of the XML information set the CMS messages use.
#[derive(Debug)]
struct Element {
    namespace: Option<String>,
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    /// Child elements of an operation may be qualified (elementFormDefault
    /// "qualified", as our WSDL says) or unqualified (what many RPC-style stacks
    /// send); both are accepted.
    fn is_cms_or_unqualified(&self, name: &str) -> bool {
        self.name == name && matches!(self.namespace.as_deref(), None | Some(CMS_NAMESPACE))
    }

    /// A child by local name, unqualified or in its parent's namespace.
    fn field(&self, name: &str) -> Result<&Element, CodecError> {
        self.children
            .iter()
            .find(|c| c.name == name && (c.namespace.is_none() || c.namespace == self.namespace))
            .ok_or_else(|| CodecError::Content(format!("{} has no {name}", self.name)))
    }
}

struct Envelope {
    header: Option<Element>,
    body: Element,
}

fn parse_envelope(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let root = parse_document(bytes)?;
    if root.name != "Envelope" || root.namespace.as_deref() != Some(SOAP_ENVELOPE_NAMESPACE) {
        return Err(CodecError::NotSoap(format!(
            "root element is {} in namespace {}",
            root.name,
            root.namespace.as_deref().unwrap_or("(none)")
        )));
    }
    let mut header = None;
    let mut body = None;
    for child in root.children {
        if child.namespace.as_deref() != Some(SOAP_ENVELOPE_NAMESPACE) {
            continue;
        }
        match child.name.as_str() {
            "Header" if header.is_none() => header = Some(child),
            "Body" if body.is_none() => body = Some(child),
            _ => {}
        }
    }
    let body = body.ok_or_else(|| CodecError::NotSoap("the Envelope has no Body".into()))?;
    Ok(Envelope { header, body })
}

fn parse_document(bytes: &[u8]) -> Result<Element, CodecError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(CodecError::TooLarge);
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| CodecError::Xml(format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let xml_error = |e: quick_xml::Error| CodecError::Xml(e.to_string());
    let mut reader = NsReader::from_str(text);
    let mut open: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let (namespace, event) = reader.read_resolved_event().map_err(xml_error)?;
        match event {
            Event::Start(start) => {
                let element =
                    new_element(namespace, &start, root.is_some(), open.len(), &mut elements)?;
                open.push(element);
            }
            Event::Empty(start) => {
                let element =
                    new_element(namespace, &start, root.is_some(), open.len(), &mut elements)?;
                attach(element, &mut open, &mut root);
            }
            Event::End(_) => {
                let element = open
                    .pop()
                    .ok_or_else(|| CodecError::Xml("end tag without a start tag".into()))?;
                attach(element, &mut open, &mut root);
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(xml_error)?;
                append_text(&text, &mut open)?;
            }
            Event::CData(data) => {
                let text =
                    std::str::from_utf8(&data).map_err(|e| CodecError::Xml(e.to_string()))?;
                append_text(text, &mut open)?;
            }
            Event::DocType(_) => {
                return Err(CodecError::NotSoap(
                    "a SOAP message must not contain a DTD".into(),
                ));
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(unclosed) = open.last() {
        return Err(CodecError::Xml(format!(
            "element {} is never closed",
            unclosed.name
        )));
    }
    root.ok_or_else(|| CodecError::Xml("no root element".into()))
}

fn new_element(
    namespace: ResolveResult<'_>,
    start: &BytesStart<'_>,
    after_root: bool,
    depth: usize,
    elements: &mut usize,
) -> Result<Element, CodecError> {
    if after_root {
        return Err(CodecError::Xml("content after the root element".into()));
    }
    if depth >= MAX_DEPTH {
        return Err(CodecError::Xml(format!(
            "elements nested deeper than {MAX_DEPTH}"
        )));
    }
    *elements += 1;
    if *elements > MAX_ELEMENTS {
        return Err(CodecError::Xml(format!(
            "more than {MAX_ELEMENTS} elements"
        )));
    }
    // Well-formedness of the attributes (quotes, duplicates), though none is used.
    for attribute in start.attributes() {
        attribute.map_err(|e| CodecError::Xml(e.to_string()))?;
    }
    let utf8 = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| CodecError::Xml(e.to_string()))
    };
    let namespace = match namespace {
        ResolveResult::Bound(ns) => Some(utf8(ns.as_ref())?),
        ResolveResult::Unbound => None,
        ResolveResult::Unknown(prefix) => {
            return Err(CodecError::Xml(format!(
                "undeclared namespace prefix {:?}",
                String::from_utf8_lossy(&prefix)
            )));
        }
    };
    Ok(Element {
        namespace,
        name: utf8(start.local_name().as_ref())?,
        text: String::new(),
        children: Vec::new(),
    })
}

fn attach(element: Element, open: &mut [Element], root: &mut Option<Element>) {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn append_text(text: &str, open: &mut [Element]) -> Result<(), CodecError> {
    match open.last_mut() {
        Some(element) => {
            element.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(CodecError::Xml("text outside the root element".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate(customer_id: &str) -> CmsRequest {
        CmsRequest {
            idempotency_key: Some("ORD-1:cms.validate".into()),
            call: CmsCall::ValidateCustomer {
                customer_id: customer_id.into(),
                order_id: "ORD-1".into(),
            },
        }
    }

    #[test]
    fn the_seed_example_envelope_is_understood() {
        let seed = r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <ValidateCustomer xmlns="http://swiftlogistics.com/cms">
      <CustomerId>usr_12345</CustomerId>
      <OrderId>ORD-20260204-ABC123</OrderId>
    </ValidateCustomer>
  </soap:Body>
</soap:Envelope>"#;
        let request = decode_request(seed.as_bytes()).unwrap();
        assert_eq!(
            request,
            CmsRequest {
                idempotency_key: None,
                call: CmsCall::ValidateCustomer {
                    customer_id: "usr_12345".into(),
                    order_id: "ORD-20260204-ABC123".into(),
                },
            }
        );
    }

    #[test]
    fn requests_round_trip_with_their_idempotency_key() {
        let cancel = CmsRequest {
            idempotency_key: Some("ORD-9:cms.cancel".into()),
            call: CmsCall::CancelOrder {
                order_id: "ORD-9".into(),
            },
        };
        for request in [validate("usr_<&>\"'"), cancel] {
            assert_eq!(
                decode_request(encode_request(&request).as_bytes()).unwrap(),
                request
            );
        }
    }

    #[test]
    fn special_characters_are_escaped_on_the_wire() {
        let xml = encode_request(&validate("a&b<c>"));
        assert!(
            xml.contains("<CustomerId>a&amp;b&lt;c&gt;</CustomerId>"),
            "{xml}"
        );
    }

    #[test]
    fn fault_codes_are_classified_by_their_local_name() {
        let fault = |code: &str| {
            format!(
                r#"<e:Envelope xmlns:e="{SOAP_ENVELOPE_NAMESPACE}"><e:Body><e:Fault>
                   <faultcode>{code}</faultcode><faultstring>Unknown customer</faultstring>
                   <detail><x:Why xmlns:x="urn:x">no record</x:Why></detail>
                   </e:Fault></e:Body></e:Envelope>"#
            )
        };
        for (code, kind) in [
            ("soap:Client", FaultKind::Client),
            ("s:Client", FaultKind::Client),
            ("Client", FaultKind::Client),
            (" e:Client.Authentication ", FaultKind::Client),
            ("soap:Server", FaultKind::Server),
            ("VersionMismatch", FaultKind::Server),
        ] {
            let reply = decode_reply(fault(code).as_bytes()).unwrap();
            assert_eq!(
                reply,
                CmsReply::Fault(SoapFault {
                    kind,
                    message: "Unknown customer".into()
                }),
                "{code}"
            );
        }
    }

    #[test]
    fn cancellation_accepts_success_as_its_flag() {
        let xml = format!(
            r#"<Envelope xmlns="{SOAP_ENVELOPE_NAMESPACE}"><Body>
               <CancelOrderResponse xmlns="{CMS_NAMESPACE}"><Success> 0 </Success></CancelOrderResponse>
               </Body></Envelope>"#
        );
        assert_eq!(
            decode_reply(xml.as_bytes()).unwrap(),
            CmsReply::Cancellation { cancelled: false }
        );
    }

    #[test]
    fn an_invalid_customer_needs_no_name() {
        let xml = format!(
            r#"<s:Envelope xmlns:s="{SOAP_ENVELOPE_NAMESPACE}"><s:Body><c:ValidateCustomerResponse
               xmlns:c="{CMS_NAMESPACE}"><Valid>false</Valid></c:ValidateCustomerResponse></s:Body></s:Envelope>"#
        );
        let reply = decode_reply(xml.as_bytes()).unwrap();
        assert!(matches!(
            reply,
            CmsReply::Validation(CustomerValidation { valid: false, .. })
        ));
    }

    #[test]
    fn a_valid_customer_without_a_name_is_malformed() {
        let xml = format!(
            r#"<s:Envelope xmlns:s="{SOAP_ENVELOPE_NAMESPACE}"><s:Body><ValidateCustomerResponse
               xmlns="{CMS_NAMESPACE}"><Valid>true</Valid><Tier>gold</Tier></ValidateCustomerResponse></s:Body></s:Envelope>"#
        );
        assert!(matches!(
            decode_reply(xml.as_bytes()),
            Err(CodecError::Content(_))
        ));
    }

    #[test]
    fn elements_are_matched_by_namespace_not_by_prefix() {
        // Right local names, wrong namespaces: an impostor envelope and operation.
        let wrong_envelope = format!(
            r#"<soap:Envelope xmlns:soap="urn:not-soap"><soap:Body><ValidateCustomer xmlns="{CMS_NAMESPACE}">
               <CustomerId>u</CustomerId><OrderId>o</OrderId></ValidateCustomer></soap:Body></soap:Envelope>"#
        );
        assert!(matches!(
            decode_request(wrong_envelope.as_bytes()),
            Err(CodecError::NotSoap(_))
        ));
        let wrong_operation = format!(
            r#"<soap:Envelope xmlns:soap="{SOAP_ENVELOPE_NAMESPACE}"><soap:Body><cms:ValidateCustomer xmlns:cms="urn:other">
               <CustomerId>u</CustomerId><OrderId>o</OrderId></cms:ValidateCustomer></soap:Body></soap:Envelope>"#
        );
        assert!(matches!(
            decode_request(wrong_operation.as_bytes()),
            Err(CodecError::Content(_))
        ));
    }

    #[test]
    fn hostile_or_broken_documents_are_errors() {
        let too_large = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            decode_request(&too_large).unwrap_err(),
            CodecError::TooLarge
        );
        let deep = format!(
            "<soap:Envelope xmlns:soap=\"{SOAP_ENVELOPE_NAMESPACE}\"><soap:Body>{}</soap:Body></soap:Envelope>",
            "<a>".repeat(100)
        );
        for broken in [
            "".to_string(),
            "<soap:Envelope>".to_string(),
            "<a></b>".to_string(),
            "<!DOCTYPE x [<!ENTITY e \"boom\">]><x>&e;</x>".to_string(),
            format!(
                "<soap:Envelope xmlns:soap=\"{SOAP_ENVELOPE_NAMESPACE}\"><soap:Body/></soap:Envelope><x/>"
            ),
            format!(
                "<soap:Envelope xmlns:soap=\"{SOAP_ENVELOPE_NAMESPACE}\"><soap:Body/></soap:Envelope>"
            ),
            deep,
        ] {
            assert!(decode_request(broken.as_bytes()).is_err(), "{broken}");
            assert!(decode_reply(broken.as_bytes()).is_err(), "{broken}");
        }
    }

    /// Any string, plus strings dense in the characters XML treats specially.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[&<>\"'\\]\\r\\n\\t ;#a-zA-Z0-9\\x00-\\x08]{0,24}"
        ]
    }

    /// What survives a trip through XML 1.0.
    fn representable(s: &str) -> String {
        s.chars()
            .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
            .collect()
    }

    #[derive(Debug, Clone)]
    struct Dress {
        declaration: bool,
        envelope_prefix: Option<String>,
        cms_prefix: Option<String>,
        gaps: Vec<String>,
    }

    fn dress() -> impl Strategy<Value = Dress> {
        let prefix = "[a-wA-WyzYZ_][a-zA-Z0-9_.-]{0,6}";
        (
            any::<bool>(),
            proptest::option::of(prefix),
            proptest::option::of(prefix),
            proptest::collection::vec("[ \t\r\n]{0,3}", 12),
        )
            .prop_filter(
                "the two namespaces need distinct prefixes",
                |(_, e, c, _)| e.is_none() || e != c,
            )
            .prop_map(|(declaration, envelope_prefix, cms_prefix, gaps)| Dress {
                declaration,
                envelope_prefix,
                cms_prefix,
                gaps,
            })
    }

    impl Dress {
        fn gap(&self, i: usize) -> &str {
            &self.gaps[i % self.gaps.len()]
        }

        /// An envelope as another SOAP stack might write it: its own prefixes (or
        /// default namespaces), whitespace between elements, comments, extra
        /// attributes, and header entries and body children we do not know.
        fn envelope(&self, header: &str, body: &str) -> String {
            let (env, env_decl) = match &self.envelope_prefix {
                Some(p) => (
                    format!("{p}:"),
                    format!("xmlns:{p}=\"{SOAP_ENVELOPE_NAMESPACE}\""),
                ),
                None => (
                    String::new(),
                    format!("xmlns=\"{SOAP_ENVELOPE_NAMESPACE}\""),
                ),
            };
            let declaration = if self.declaration {
                "<?xml version='1.0' encoding='UTF-8' standalone='yes'?>"
            } else {
                ""
            };
            let g = |i| self.gap(i);
            format!(
                "{declaration}{}<{env}Envelope {env_decl}{}xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{}\
                 <{env}Header>{}<t:Trace xmlns:t=\"urn:trace\" {env}mustUnderstand=\"0\">span-1</t:Trace>{}{header}{}</{env}Header>{}\
                 <!-- routed by the legacy bus -->{}<{env}Body {env}encodingStyle=\"\">{}{body}{}\
                 <x:Audit xmlns:x=\"urn:audit\">kept</x:Audit>{}</{env}Body>{}</{env}Envelope>{}",
                g(0),
                g(1),
                g(2),
                g(3),
                g(4),
                g(5),
                g(6),
                g(7),
                g(8),
                g(9),
                g(10),
                g(11),
                g(12)
            )
        }

        fn cms_prefix_and_declaration(&self) -> (String, String) {
            match &self.cms_prefix {
                Some(p) => (format!("{p}:"), format!("xmlns:{p}=\"{CMS_NAMESPACE}\"")),
                None => (String::new(), format!("xmlns=\"{CMS_NAMESPACE}\"")),
            }
        }

        fn cms_leaf(&self, name: &str, value: &str) -> String {
            let (p, decl) = self.cms_prefix_and_declaration();
            format!("<{p}{name} {decl}>{}</{p}{name}>", escape(value))
        }

        /// An element of the CMS namespace with its children, in this dress.
        fn cms_element(&self, name: &str, fields: &[(&str, &str)]) -> String {
            let (p, decl) = self.cms_prefix_and_declaration();
            let mut xml = format!("<{p}{name} {decl}>");
            for (i, (field, value)) in fields.iter().enumerate() {
                xml.push_str(self.gap(i));
                xml.push_str(&format!("<{p}{field}>{}</{p}{field}>", escape(value)));
                xml.push_str("<Unknown attr=\"1\"><Nested/></Unknown>");
            }
            xml.push_str(self.gap(fields.len()));
            xml.push_str(&format!("</{p}{name}>"));
            xml
        }
    }

    proptest! {
        #[test]
        fn requests_survive_encoding(customer in text(), order in text(), key in proptest::option::of(text())) {
            let expected = CmsRequest {
                idempotency_key: key.as_deref().map(representable),
                call: CmsCall::ValidateCustomer {
                    customer_id: representable(&customer),
                    order_id: representable(&order),
                },
            };
            let request = CmsRequest {
                idempotency_key: key,
                call: CmsCall::ValidateCustomer { customer_id: customer, order_id: order },
            };
            prop_assert_eq!(decode_request(encode_request(&request).as_bytes()).unwrap(), expected);
        }

        #[test]
        fn replies_survive_encoding(valid in any::<bool>(), name in text(), tier in text(), client in any::<bool>(), message in text()) {
            let validation = CmsReply::Validation(CustomerValidation { valid, customer_name: name.clone(), tier: tier.clone() });
            prop_assert_eq!(
                decode_reply(encode_reply(&validation).as_bytes()).unwrap(),
                CmsReply::Validation(CustomerValidation { valid, customer_name: representable(&name), tier: representable(&tier) })
            );
            let kind = if client { FaultKind::Client } else { FaultKind::Server };
            let fault = CmsReply::Fault(SoapFault { kind, message: message.clone() });
            prop_assert_eq!(
                decode_reply(encode_reply(&fault).as_bytes()).unwrap(),
                CmsReply::Fault(SoapFault { kind, message: representable(&message) })
            );
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(text in "[<>/=\"' a-z:&;#!?\\[\\]-]{0,256}") {
            let _ = decode_request(text.as_bytes());
            let _ = decode_reply(text.as_bytes());
        }

        #[test]
        fn mutilated_envelopes_never_panic(cut in 0usize..400, byte in any::<u8>()) {
            let mut xml = encode_request(&validate("usr_1")).into_bytes();
            let at = cut % xml.len();
            xml[at] = byte;
            let _ = decode_request(&xml);
            xml.truncate(at);
            let _ = decode_request(&xml);
        }

        #[test]
        fn requests_in_any_dress_are_understood(dress in dress(), customer in "[a-z_0-9&<>]{1,12}", key in "[A-Z0-9:.-]{1,16}") {
            let header = dress.cms_leaf("IdempotencyKey", &key);
            let body = dress.cms_element("ValidateCustomer", &[("CustomerId", &customer), ("OrderId", "ORD-7")]);
            let xml = dress.envelope(&header, &body);
            let request = decode_request(xml.as_bytes());
            prop_assert_eq!(request, Ok(CmsRequest {
                idempotency_key: Some(key),
                call: CmsCall::ValidateCustomer { customer_id: customer, order_id: "ORD-7".into() },
            }), "{}", xml);
        }

        #[test]
        fn replies_in_any_dress_are_understood(dress in dress(), name in "[A-Za-z &<>']{1,12}") {
            let body = dress.cms_element("ValidateCustomerResponse", &[("Valid", "1"), ("CustomerName", &name), ("Tier", "premium")]);
            let xml = dress.envelope("", &body);
            prop_assert_eq!(decode_reply(xml.as_bytes()), Ok(CmsReply::Validation(CustomerValidation {
                valid: true, customer_name: name, tier: "premium".into(),
            })), "{}", xml);
            let env = dress.envelope_prefix.as_ref().map(|p| format!("{p}:")).unwrap_or_default();
            let fault = dress.envelope("", &format!(
                "<{env}Fault>{}<faultcode>{env}Client</faultcode>{}<faultstring>Unknown customer</faultstring></{env}Fault>",
                dress.gap(0), dress.gap(1)
            ));
            prop_assert_eq!(decode_reply(fault.as_bytes()), Ok(CmsReply::Fault(SoapFault {
                kind: FaultKind::Client, message: "Unknown customer".into(),
            })), "{}", fault);
        }
    }
}
