//! What the runtime reads from the CMS's WSDL 1.1, as seed 000's zeep client does:
//! the soapAction of each operation of the SOAP 1.1 binding, and the service address.
//! Real SOAP servers dispatch by the `SOAPAction` header, so these must be the
//! server's values, not ours. Pure: no IO, capped input, never a panic.

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use std::collections::HashMap;

const WSDL_NAMESPACE: &str = "http://schemas.xmlsoap.org/wsdl/";
const WSDL_SOAP11_NAMESPACE: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
/// A WSDL of a handful of operations is a few kilobytes; generated ones of large
/// services reach a few hundred.
pub(crate) const MAX_WSDL_BYTES: usize = 4 * 1024 * 1024;
const MAX_DEPTH: usize = 64;

/// The parts of a WSDL the client uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceDescription {
    /// `soap:address location` of the port bound to the SOAP 1.1 binding.
    pub(crate) address: Option<String>,
    /// soapAction by operation name, from that binding.
    pub(crate) actions: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsdlError {
    #[error("WSDL larger than {MAX_WSDL_BYTES} bytes")]
    TooLarge,
    #[error("WSDL is not well-formed XML: {0}")]
    Xml(String),
    #[error("WSDL has no SOAP 1.1 binding")]
    NoSoapBinding,
    #[error("a WSDL must not contain a DTD")]
    Dtd,
}

#[derive(Debug, Default)]
struct Binding {
    name: String,
    soap11: bool,
    actions: HashMap<String, String>,
}

/// Where the reader is, as far as the WSDL's meaning goes.
enum Scope {
    Binding(Binding),
    /// An operation of the binding being read, by name.
    BindingOperation(String),
    /// A port of a service: the local name of its binding.
    Port(String),
    Other,
}

pub fn parse(bytes: &[u8]) -> Result<ServiceDescription, WsdlError> {
    if bytes.len() > MAX_WSDL_BYTES {
        return Err(WsdlError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| WsdlError::Xml(format!("not UTF-8: {e}")))?;
    let mut reader = NsReader::from_str(text.strip_prefix('\u{FEFF}').unwrap_or(text));
    let mut scopes: Vec<Scope> = Vec::new();
    let mut bindings: Vec<Binding> = Vec::new();
    // (binding local name, address) of every SOAP 1.1 port.
    let mut ports: Vec<(String, String)> = Vec::new();
    loop {
        let (namespace, event) = reader
            .read_resolved_event()
            .map_err(|e| WsdlError::Xml(e.to_string()))?;
        match event {
            Event::Start(start) => {
                if scopes.len() >= MAX_DEPTH {
                    return Err(WsdlError::Xml(format!("nested deeper than {MAX_DEPTH}")));
                }
                let scope = open(&namespace, &start, &mut scopes, &mut ports)?;
                scopes.push(scope);
            }
            Event::Empty(start) => {
                let scope = open(&namespace, &start, &mut scopes, &mut ports)?;
                close(scope, &mut bindings);
            }
            Event::End(_) => {
                let scope = scopes
                    .pop()
                    .ok_or_else(|| WsdlError::Xml("end tag without a start tag".into()))?;
                close(scope, &mut bindings);
            }
            Event::DocType(_) => return Err(WsdlError::Dtd),
            Event::Eof => break,
            _ => {}
        }
    }
    if !scopes.is_empty() {
        return Err(WsdlError::Xml("an element is never closed".into()));
    }
    // The port that serves a SOAP 1.1 binding, else any SOAP 1.1 binding.
    let soap11 = |name: &str| bindings.iter().position(|b| b.soap11 && b.name == name);
    let (binding, address) = match ports.iter().find_map(|(b, a)| Some((soap11(b)?, a))) {
        Some((binding, address)) => (binding, Some(address.clone())),
        None => (
            bindings
                .iter()
                .position(|b| b.soap11)
                .ok_or(WsdlError::NoSoapBinding)?,
            ports.first().map(|(_, a)| a.clone()),
        ),
    };
    Ok(ServiceDescription {
        address,
        actions: std::mem::take(&mut bindings[binding].actions),
    })
}

fn open(
    namespace: &ResolveResult<'_>,
    start: &BytesStart<'_>,
    scopes: &mut [Scope],
    ports: &mut Vec<(String, String)>,
) -> Result<Scope, WsdlError> {
    let ns = match namespace {
        ResolveResult::Bound(ns) => std::str::from_utf8(ns.as_ref()).unwrap_or_default(),
        _ => "",
    };
    let local = std::str::from_utf8(start.local_name().into_inner()).unwrap_or_default();
    let scope = match (ns, local, scopes.last_mut()) {
        (WSDL_NAMESPACE, "binding", _) => Scope::Binding(Binding {
            name: attribute(start, "name")?.unwrap_or_default(),
            ..Binding::default()
        }),
        (WSDL_SOAP11_NAMESPACE, "binding", Some(Scope::Binding(binding))) => {
            binding.soap11 = true;
            Scope::Other
        }
        (WSDL_NAMESPACE, "operation", Some(Scope::Binding(_))) => {
            Scope::BindingOperation(attribute(start, "name")?.unwrap_or_default())
        }
        (WSDL_SOAP11_NAMESPACE, "operation", Some(Scope::BindingOperation(operation))) => {
            let operation = operation.clone();
            if let Some(action) = attribute(start, "soapAction")? {
                // The operation is two scopes up once this element is pushed; record
                // the action on the binding right away.
                if let Some(Scope::Binding(binding)) = scopes.iter_mut().rev().nth(1) {
                    binding.actions.insert(operation, action);
                }
            }
            Scope::Other
        }
        (WSDL_NAMESPACE, "port", _) => {
            let binding = attribute(start, "binding")?.unwrap_or_default();
            let local = binding.rsplit(':').next().unwrap_or_default().to_owned();
            Scope::Port(local)
        }
        (WSDL_SOAP11_NAMESPACE, "address", Some(Scope::Port(binding))) => {
            if let Some(location) = attribute(start, "location")? {
                ports.push((binding.clone(), location));
            }
            Scope::Other
        }
        _ => Scope::Other,
    };
    Ok(scope)
}

fn close(scope: Scope, bindings: &mut Vec<Binding>) {
    if let Scope::Binding(binding) = scope {
        bindings.push(binding);
    }
}

fn attribute(start: &BytesStart<'_>, name: &str) -> Result<Option<String>, WsdlError> {
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| WsdlError::Xml(e.to_string()))?;
        if attribute.key.local_name().into_inner() == name.as_bytes() {
            let value = attribute
                .unescape_value()
                .map_err(|e| WsdlError::Xml(e.to_string()))?;
            return Ok(Some(value.trim().to_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What spyne 2.14 serves for the CMS of tests/peers/spyne_cms.py, shortened.
    const SPYNE: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<wsdl:definitions xmlns:wsdlsoap11="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:wsdlsoap12="http://schemas.xmlsoap.org/wsdl/soap12/" xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:tns="http://swiftlogistics.com/cms" targetNamespace="http://swiftlogistics.com/cms" name="CmsService">
<wsdl:service name="Cms"><wsdl:port name="CmsService" binding="tns:CmsService"><wsdlsoap11:address location="http://127.0.0.1:38113/cms"/></wsdl:port></wsdl:service>
<wsdl:portType name="CmsService"><wsdl:operation name="ValidateCustomer"/></wsdl:portType>
<wsdl:binding name="CmsService" type="tns:CmsService"><wsdlsoap11:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
<wsdl:operation name="ValidateCustomer"><wsdlsoap11:operation soapAction="ValidateCustomer" style="document"/><wsdl:input name="ValidateCustomer"><wsdlsoap11:body use="literal"/></wsdl:input></wsdl:operation>
<wsdl:operation name="CancelOrder"><wsdlsoap11:operation soapAction="CancelOrder" style="document"/></wsdl:operation>
</wsdl:binding></wsdl:definitions>"#;

    #[test]
    fn reads_actions_and_address_of_the_soap_11_binding() {
        let description = parse(SPYNE.as_bytes()).unwrap();
        assert_eq!(
            description.address.as_deref(),
            Some("http://127.0.0.1:38113/cms")
        );
        assert_eq!(description.actions["ValidateCustomer"], "ValidateCustomer");
        assert_eq!(description.actions["CancelOrder"], "CancelOrder");
    }

    #[test]
    fn prefers_the_port_of_the_soap_11_binding_over_a_soap_12_one() {
        let wsdl = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:s="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:s12="http://schemas.xmlsoap.org/wsdl/soap12/">
  <binding name="Soap12"><s12:binding/><operation name="ValidateCustomer"><s12:operation soapAction="urn:v12"/></operation></binding>
  <binding name="Soap11"><s:binding/><operation name="ValidateCustomer"><s:operation soapAction="urn:v11"/></operation></binding>
  <service name="Cms">
    <port name="P12" binding="tns:Soap12"><s12:address location="http://cms/v12"/></port>
    <port name="P11" binding="tns:Soap11"><s:address location="http://cms/v11"/></port>
  </service>
</definitions>"#;
        let description = parse(wsdl.as_bytes()).unwrap();
        assert_eq!(description.address.as_deref(), Some("http://cms/v11"));
        assert_eq!(description.actions["ValidateCustomer"], "urn:v11");
    }

    #[test]
    fn refuses_what_is_not_a_usable_wsdl() {
        assert_eq!(
            parse(b"<definitions xmlns='http://schemas.xmlsoap.org/wsdl/'/>"),
            Err(WsdlError::NoSoapBinding)
        );
        assert!(matches!(parse(b"<html><body>"), Err(WsdlError::Xml(_))));
        assert!(matches!(parse(b"not xml <"), Err(WsdlError::Xml(_))));
        assert_eq!(
            parse(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"),
            Err(WsdlError::Dtd)
        );
        assert_eq!(
            parse(&vec![b' '; MAX_WSDL_BYTES + 1]),
            Err(WsdlError::TooLarge)
        );
    }
}
